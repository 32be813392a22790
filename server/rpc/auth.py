"""Per-client bearer tokens with scopes, and the interceptor that checks them.

Each caller (core banking, the app backend, the fraud engine, a delivery adapter) gets its
own token with only the scopes it needs, so a leaked fraud-engine token cannot read user
profiles and one client can be cut off without touching the others.

Tokens look like ``nudge_<id>_<secret>``. The id is public and makes lookup O(1); only a
SHA-256 of the secret is stored. A fast hash is enough — the secret is 256 random bits, so
there is nothing to brute-force — and it keeps the check to about a microsecond per RPC
where a password hash (bcrypt, scrypt) would cost milliseconds on every call.

The token file is JSON, mode 0600, replaced atomically (``os.replace``) and edited under an
``flock`` so two ``nudge token`` commands cannot lose each other's change. A running server
re-reads it when it changes (checked at most once a second), so a new or revoked token
takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from nudge.server.rpc.handlers import wrap_behaviour

log = logging.getLogger(__name__)

SCOPES = ("track", "decide", "risk", "deliveries", "insights", "admin")
ADMIN = "admin"
TOKEN_PREFIX = "nudge"
_FILE_VERSION = 1

# Full method name -> scope. A service prefix (ending in "/") covers all its methods.
METHOD_SCOPES: dict[str, str] = {
    "/nudge.v1.DecisionService/Track": "track",
    "/nudge.v1.DecisionService/TrackStream": "track",
    "/nudge.v1.DecisionService/Decide": "decide",
    # A segment reads who the stored users are: a campaign tool's decide token may.
    "/nudge.v1.DecisionService/DecideBatch": "decide",
    "/nudge.v1.DecisionService/ReportOutcome": "decide",
    # A user's whole profile: support staff only, never the fraud engine's risk token.
    "/nudge.v1.DecisionService/GetUser": ADMIN,
    "/nudge.v1.RiskService/": "risk",
    "/nudge.v1.DeliveryService/": "deliveries",
    # Aggregates over every user (no one user's data): product analysts, not the SDK.
    "/nudge.v1.InsightsService/": "insights",
    # Node to node (cluster mode): InsightsService's gathering, with its caller's token.
    "/nudge.v1.ClusterService/ReadSummaries": "insights",
    "/nudge.v1.DiagnosticsService/GetServerInfo": ADMIN,
    "/nudge.v1.AdminService/": ADMIN,
}
# Methods any caller may use without a token: liveness probes, tooling, the latency floor.
PUBLIC_METHODS = frozenset({"/nudge.v1.DiagnosticsService/Echo"})
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (for logs and audit) and what it may do."""

    name: str
    scopes: frozenset[str]
    token_id: str = ""

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


class TokenInfo(NamedTuple):
    """A stored token as ``nudge token list`` shows it (never the secret)."""

    token_id: str
    name: str
    scopes: tuple[str, ...]
    created: str
    revoked: str | None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(token_id: str, secret: str) -> str:
    # The id is hashed in too, so a stored hash cannot be moved to another id.
    return "sha256:" + hashlib.sha256(f"{token_id}:{secret}".encode()).hexdigest()


def _parse(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise scope names; ValueError names the unknown ones."""
    wanted = tuple(sorted({s.strip() for s in scopes if s.strip()}))
    if not wanted:
        raise ValueError(f"scopes: give at least one of {', '.join(SCOPES)}")
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise ValueError(f"scopes: unknown {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return wanted


class TokenStore:
    """Tokens in one JSON file: create (plaintext shown once), revoke, list, verify.

    ``verify`` is called on every RPC from grpc's polling thread, so it only reads memory;
    the file is re-read when its stat changes, at most every ``reload_interval`` seconds.
    A file that became unreadable or malformed keeps the last good tokens (and logs an
    error) rather than locking every client out; a deleted file means no tokens.
    """

    def __init__(self, path: Path | str, reload_interval: float = 1.0,
                 private: bool = False) -> None:
        self.path = Path(path)
        self.reload_interval = reload_interval
        # The server's copy: a file others may read or write is refused at load (and a
        # change to such permissions later keeps the previous tokens).
        self.private = private
        self._lock = threading.Lock()
        self._tokens: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    # -- reading ---------------------------------------------------------------------------

    def _read_file(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text()
            mode = os.stat(self.path).st_mode & 0o777
        except FileNotFoundError:
            return {}
        if self.private and mode & 0o077:
            raise ValueError(
                f"{self.path}: mode {mode:04o} lets others read or change the tokens; "
                f"chmod 0600 {self.path}"
            )
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != _FILE_VERSION:
            raise ValueError(f"{self.path}: not a nudge token file (version {_FILE_VERSION})")
        tokens = data.get("tokens", {})
        if not isinstance(tokens, dict):
            raise ValueError(f"{self.path}: 'tokens' must be an object")
        return tokens

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.reload_interval:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if not force and stamp == self._stamp:
                return
            try:
                tokens = self._read_file()
            except (OSError, ValueError) as exc:
                if force:
                    raise ValueError(f"auth_tokens_file: {exc}") from None
                log.error("token file %s unreadable, keeping previous tokens: %s", self.path, exc)
                return
            self._tokens, self._stamp = tokens, stamp

    def verify(self, token: str) -> Principal | None:
        """The principal for ``token``, or None if it is malformed, unknown or revoked."""
        self._reload()
        parsed = _parse(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        entry = self._tokens.get(token_id)
        # Hash even when the id is unknown, so timing does not tell which ids exist.
        expected = entry.get("hash", "") if entry else _digest("", "")
        ok = hmac.compare_digest(_digest(token_id, secret), expected)
        if not ok or entry is None or entry.get("revoked"):
            return None
        return Principal(entry.get("name", ""), frozenset(entry.get("scopes", ())), token_id)

    def tokens(self) -> list[TokenInfo]:
        """All tokens, revoked ones included (kept for audit), oldest first."""
        self._reload(force=True)
        rows = [
            TokenInfo(
                tid,
                e.get("name", ""),
                tuple(e.get("scopes", ())),
                e.get("created", ""),
                e.get("revoked"),
            )
            for tid, e in self._tokens.items()
        ]
        return sorted(rows, key=lambda r: (r.created, r.token_id))

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read-modify-write under an exclusive lock; the file is replaced atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tokens = self._read_file()
            yield tokens
            self._write(tokens)
        finally:
            os.close(fd)
        self._reload(force=True)

    def _write(self, tokens: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"version": _FILE_VERSION, "tokens": tokens}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def create(self, name: str, scopes: Iterable[str]) -> str:
        """Add a token and return it in plaintext — the only time it is ever visible."""
        if not name.strip():
            raise ValueError("name: must not be empty (say who holds the token)")
        wanted = check_scopes(scopes)
        secret = secrets.token_urlsafe(32)
        with self._editing() as tokens:
            token_id = secrets.token_hex(8)
            while token_id in tokens:
                token_id = secrets.token_hex(8)
            tokens[token_id] = {
                "name": name.strip(),
                "scopes": list(wanted),
                "hash": _digest(token_id, secret),
                "created": _now(),
                "revoked": None,
            }
        return f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def revoke(self, token_id: str) -> None:
        """Revoke by id (the part after ``nudge_``); the entry stays, marked, for audit.

        Raises KeyError if there is no such token. A running server stops accepting the
        token within ``reload_interval`` seconds.
        """
        with self._editing() as tokens:
            entry = tokens.get(token_id)
            if entry is None:
                raise KeyError(f"no token with id {token_id!r}")
            if not entry.get("revoked"):
                entry["revoked"] = _now()


# -- server side ---------------------------------------------------------------------------


def scope_for(method: str) -> str | None:
    """The scope ``method`` needs; "" for public methods; None when the method is not mapped
    (then only admin may call it: new RPCs are closed until someone decides their scope)."""
    if method in PUBLIC_METHODS or method.startswith(PUBLIC_PREFIXES):
        return ""
    scope = METHOD_SCOPES.get(method)
    if scope is None:
        scope = METHOD_SCOPES.get(method[: method.rfind("/") + 1])
    return scope


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """``handler`` with its behaviour replaced by one that aborts with ``code``.

    The interceptor runs in grpc's polling thread, where raising would become UNKNOWN;
    returning a handler of the same kind that aborts gives the caller the right status.
    """

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(code, message)
        yield  # pragma: no cover - makes this a generator, as a streaming handler must be

    return wrap_behaviour(handler, lambda _: refuse, lambda _: refuse_stream)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` against a TokenStore and the method's scope.

    Missing or invalid token → UNAUTHENTICATED; valid token without the scope →
    PERMISSION_DENIED naming the scope. Allowed calls pass through unwrapped (no cost on
    the hot path); ``on_principal`` (e.g. to log or count per client) sees every principal.
    """

    def __init__(
        self,
        store: TokenStore,
        on_principal: Callable[[str, Principal], None] | None = None,
    ) -> None:
        self.store = store
        self.on_principal = on_principal

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        scope = scope_for(method)
        if scope == "":
            return handler
        try:
            token = _bearer(handler_call_details.invocation_metadata)
            if not token:
                return _refusing(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing token: send metadata 'authorization: Bearer nudge_<id>_<secret>'"
                    if token is None
                    else "authorization metadata must be 'Bearer <token>'",
                )
            principal = self.store.verify(token)
        except Exception:
            log.exception("token check failed for %s", method)
            return _refusing(handler, grpc.StatusCode.UNAVAILABLE, "cannot check tokens now")
        if principal is None:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked token")
        if scope is None:
            if ADMIN not in principal.scopes:
                return _refusing(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} has no scope assigned; only an admin token may call it",
                )
        elif not principal.allows(scope):
            return _refusing(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token lacks scope {scope!r} needed for {method}",
            )
        if self.on_principal is not None:
            self.on_principal(method, principal)
        return handler
