"""Server lifecycle: health, reflection, readiness, graceful shutdown, configuration."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from nudge.clients import Client, make_event
from nudge.server.app import SERVICE_NAMES, NudgeServer, create_server
from nudge.server.config import Config, ConfigError, load_config
from nudge.server.storage.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_health_is_not_serving_until_kernels_are_warm(data_dir: Path) -> None:
    srv = create_server(Config(port=0, data_dir=data_dir))
    srv.grpc_server.start()
    try:
        with Client(f"127.0.0.1:{srv.port}", retries=0) as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as err:
                c.track([make_event("u1", "app_opened")])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "warming up" in err.value.details()
            srv.warm_up_and_serve()
            assert c.health() == "SERVING"
            assert all(c.health(name) == "SERVING" for name in SERVICE_NAMES)
    finally:
        srv.stop()


def test_client_retry_on_unavailable_reuses_the_event_id(data_dir: Path) -> None:
    srv = create_server(Config(port=0, data_dir=data_dir))
    srv.grpc_server.start()
    try:
        timer = threading.Timer(0.3, srv.warm_up_and_serve)
        timer.start()
        with Client(f"127.0.0.1:{srv.port}", retries=8, backoff=0.05) as c:
            reply = c.track([make_event("u1", "app_opened", event_id="only-once")])
            timer.join()
            assert reply.accepted == 1
            assert c.get_user("u1").event_count == 1
    finally:
        srv.stop()


def test_reflection_lists_every_service(server: NudgeServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert set(SERVICE_NAMES) <= services
    assert "grpc.health.v1.Health" in services


def _buf() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


@pytest.mark.skipif(_buf() is None, reason="buf not installed (scripts/buf installs it)")
def test_buf_curl_through_reflection(server: NudgeServer) -> None:
    base = f"http://127.0.0.1:{server.port}/nudge.v1.DecisionService"
    event = {"eventId": "curl-1", "userId": "u-curl", "type": "app_opened"}
    common = [_buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    track = subprocess.run(
        [*common, "-d", json.dumps({"events": [event]}), f"{base}/Track"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(track.stdout)["accepted"] == "1"
    user = subprocess.run(
        [*common, "-d", json.dumps({"userId": "u-curl"}), f"{base}/GetUser"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(user.stdout)["user"]["eventTypes"][0]["type"] == "app_opened"


def test_sigterm_drains_commits_and_closes(server_process, data_dir: Path) -> None:
    proc = server_process(data_dir)
    with Client(proc.target) as c:
        c.wait_until_serving()
        assert c.track([make_event("u1", "app_opened", event_id="before-term")]).accepted == 1
    assert proc.terminate() == 0
    assert "stopped; store closed" in proc.log_path.read_text()
    store = Store(data_dir)
    try:
        view = store.get_user("u1")
        assert view is not None and view.totals.sum() == 1
    finally:
        store.close()


def test_defaults_match_the_readme() -> None:
    config = load_config(environ={})
    assert config.port == 50051
    assert config.data_dir == Path("nudge-data")


def test_config_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "nudge.toml"
    path.write_text('[server]\nport = 6000\ndata_dir = "from-file"\nhalf_life_seconds = 60\n')
    config = load_config(path, environ={"NUDGE_PORT": "7000"}, overrides={"data_dir": "flag"})
    assert (config.port, config.data_dir, config.half_life_seconds) == (7000, Path("flag"), 60.0)
    env_file = load_config(environ={"NUDGE_CONFIG": str(path)})
    assert env_file.port == 6000


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[server]\nprot = 1\n", {}, r"\[server\].prot is not a setting"),
        ("[server]\nport = 'x'\n", {}, "port .*expected int"),
        ("", {"NUDGE_PORT": "99999"}, r"port: must be in \[0, 65535\]"),
        ("", {"NUDGE_HALF_LIFE_SECONDS": "0"}, "half_life_seconds: must be positive"),
        ("[server\n", {}, "nudge.toml"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "nudge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ=environ)


def test_port_in_use_is_a_clear_error(server: NudgeServer, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        create_server(Config(port=server.port, data_dir=tmp_path / "other"))


def test_stop_is_idempotent_and_fast_when_idle(data_dir: Path) -> None:
    srv = create_server(Config(port=0, data_dir=data_dir, grace_seconds=1.0))
    srv.start()
    start = time.monotonic()
    srv.stop()
    srv.stop()
    assert time.monotonic() - start < 5


def test_a_method_nobody_implemented_is_unimplemented_not_internal() -> None:
    from concurrent import futures

    from nudge.server.rpc.status import StatusInterceptor
    from nudge.v1 import diagnostics_service_pb2 as dpb
    from nudge.v1 import diagnostics_service_pb2_grpc as dgrpc

    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[StatusInterceptor()])
    dgrpc.add_DiagnosticsServiceServicer_to_server(dgrpc.DiagnosticsServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(
            grpc.RpcError
        ) as err:
            dgrpc.DiagnosticsServiceStub(channel).Echo(dpb.EchoRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)
