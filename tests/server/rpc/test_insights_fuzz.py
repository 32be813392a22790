"""Property-based fuzzing of InsightsService's requests (as tests/server/rpc/test_fuzz.py
does for the other services): odd numbers, odd types, times far away, over a store with a
few users. Only OK or INVALID_ARGUMENT, never INTERNAL or a crash."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.v1 import insights_service_pb2 as pb
from nudge.v1 import insights_service_pb2_grpc as pb_grpc

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
FUZZ = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
small = st.integers(-3, 500)
types = st.lists(st.one_of(st.sampled_from(["app_opened", "loan_completed"]), st.text(max_size=70)),
                 max_size=3)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.InsightsServiceStub]:
    srv: NudgeServer = create_server(Config(port=0, data_dir=tmp_path_factory.mktemp("f") / "d"))
    srv.start()
    with Client(f"127.0.0.1:{srv.port}") as c:
        c.track([make_event(f"u{i}", t, strings={"flow": "loan", "step": "docs"})
                 for i in range(20) for t in ("app_opened", "flow_abandoned")])
        yield pb_grpc.InsightsServiceStub(c.channel)
    srv.stop()


def _stamp(request, name: str, draw_seconds: int | None, nanos: int) -> None:
    if draw_seconds is not None:
        getattr(request, name).seconds = draw_seconds
        getattr(request, name).nanos = nanos


def call(fn, request) -> grpc.StatusCode:
    try:
        fn(request, timeout=20)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


times = st.one_of(st.none(), st.integers(-62_135_596_800, 253_402_300_799))


@given(small, st.one_of(st.none(), small), small, types, small, small, small, times, times,
       st.integers(-5, 1_000_000_005))
@FUZZ
def test_retention_drivers_never_fail_badly(stub, early, from_day, to_day, retained_types,
                                            max_drivers, max_threshold, min_users, start, end,
                                            nanos) -> None:
    request = pb.RetentionDriversRequest(
        early_days=early, retained_to_day=to_day, retained_event_types=retained_types,
        max_drivers=max_drivers, max_threshold=max_threshold, min_users=min_users)
    if from_day is not None:
        request.retained_from_day = from_day
    _stamp(request, "cohort_start", start, nanos)
    _stamp(request, "cohort_end", end, nanos)
    assert call(stub.RetentionDrivers, request) in ALLOWED


@given(small, st.one_of(st.none(), small), small, st.text(max_size=70), small, small)
@FUZZ
def test_churn_flows_never_fail_badly(stub, early, from_day, to_day, flow_type, max_flows,
                                      min_users) -> None:
    request = pb.ChurnFlowsRequest(early_days=early, retained_to_day=to_day,
                                   flow_event_type=flow_type, max_flows=max_flows,
                                   min_users=min_users)
    if from_day is not None:
        request.retained_from_day = from_day
    assert call(stub.ChurnFlows, request) in ALLOWED


@given(types, small, small, st.floats(allow_nan=True, allow_infinity=True), small, small)
@FUZZ
def test_value_drivers_never_fail_badly(stub, goals, value_days, early, top, max_threshold,
                                        min_users) -> None:
    request = pb.ValueDriversRequest(goal_event_types=goals, value_days=value_days,
                                     early_days=early, top_fraction=top,
                                     max_threshold=max_threshold, min_users=min_users)
    assert call(stub.ValueDrivers, request) in ALLOWED
