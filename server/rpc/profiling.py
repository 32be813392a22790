"""cProfile around every handler, for ``nudge bench rpc --profile`` (``profile_dir``).

Each RPC method gets a ``cProfile.Profile`` per pool thread (a profiler follows only the
thread that enabled it); :meth:`ProfileInterceptor.dump` merges them and writes
``<dir>/<Method>.prof`` (read with ``pstats``), with the number of calls profiled in
``<dir>/calls.json``. Placed outermost, so the interceptors inside it are profiled with the
handler. Profiling slows every call several times over: a profiled server is for finding
where the time goes, never for timing it.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from nudge.server.rpc.handlers import wrap_behaviour


class ProfileInterceptor(grpc.ServerInterceptor):
    """Profiles the handlers that return one response (unary and client-streaming)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._profiles: dict[str, list[cProfile.Profile]] = {}
        self._calls: dict[str, int] = {}
        self._local = threading.local()

    def _profile(self, name: str) -> cProfile.Profile:
        mine: dict[str, cProfile.Profile] = self._local.__dict__.setdefault("profiles", {})
        profile = mine.get(name)
        if profile is None:
            profile = mine[name] = cProfile.Profile()
            with self._lock:
                self._profiles.setdefault(name, []).append(profile)
        return profile

    def _wrap(self, behaviour: Callable[..., Any], name: str) -> Callable[..., Any]:
        def profiled(request: Any, context: grpc.ServicerContext) -> Any:
            profile = self._profile(name)
            with self._lock:
                self._calls[name] = self._calls.get(name, 0) + 1
            profile.enable()
            try:
                return behaviour(request, context)
            finally:
                profile.disable()

        return profiled

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        name = handler_call_details.method.rpartition("/")[2]
        # Streamed responses are left as they are (a generator's time is spent between
        # grpc's iterations, not inside one call).
        return wrap_behaviour(handler, lambda b: self._wrap(b, name), lambda b: b)

    def dump(self) -> list[Path]:
        """Write every method's merged profile; call once the server has stopped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        with self._lock:
            profiles = {name: list(ps) for name, ps in self._profiles.items()}
            calls = dict(self._calls)
        for name, ps in sorted(profiles.items()):
            stats = pstats.Stats(ps[0])
            for p in ps[1:]:
                stats.add(p)
            path = self.folder / f"{name}.prof"
            stats.dump_stats(path)
            written.append(path)
        (self.folder / "calls.json").write_text(json.dumps(calls, indent=2, sort_keys=True))
        return written
