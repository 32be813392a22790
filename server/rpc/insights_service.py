"""InsightsService: RetentionDrivers, ChurnFlows, ValueDrivers. Thin: validate, read every
user's insights summary, hand to ``nudge.server.offline.insights``, reply."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import grpc

from nudge.server.clock import Clock
from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import TYPE_PATTERN
from nudge.server.offline import insights
from nudge.server.rpc.readiness import Readiness
from nudge.server.storage.store import Store
from nudge.v1 import insights_service_pb2 as pb
from nudge.v1 import insights_service_pb2_grpc as pb_grpc

MAX_TYPES = 64
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the end of Timestamp's range


def _seconds(request: Any, name: str) -> float | None:
    """A cohort bound: unset is None; nanos in [0, 1e9), not before 1970 nor past
    Timestamp's own range (a future end is fine: the cohort simply runs until now)."""
    if not request.HasField(name):
        return None
    ts = getattr(request, name)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(name, "nanos must be in [0, 1e9)")
    if ts.seconds < 0:
        raise InvalidArgument(name, "must not be before 1970-01-01")
    if ts.seconds > MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(name, "must not be after 9999-12-31 (a Timestamp's range)")
    return float(ts.seconds + ts.nanos * 1e-9)


def _cohort(request: Any, now: float) -> insights.Cohort:
    start, end = _seconds(request, "cohort_start"), _seconds(request, "cohort_end")
    if start is not None and end is not None and start >= end:
        raise InvalidArgument("cohort_start", "must be before cohort_end")
    return insights.Cohort(start, end, now)


def _positive(value: int, name: str, default: int, upper: int) -> int:
    if value < 0 or value > upper:
        raise InvalidArgument(name, f"must be 0 (default {default}) to {upper}, got {value}")
    return value or default


def check_event_type(name: str, field_name: str) -> None:
    if TYPE_PATTERN.fullmatch(name) is None:
        raise InvalidArgument(field_name, "must match [a-z][a-z0-9_.]{0,63}")


def _types(values: Any, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    names = tuple(values)
    if len(names) > MAX_TYPES:
        raise InvalidArgument(name, f"at most {MAX_TYPES} event types")
    for i, t in enumerate(names):
        check_event_type(t, f"{name}[{i}]")
    return names or default


def _figures(d: insights.Driver) -> dict[str, Any]:
    def num(x: float) -> float:
        return 0.0 if math.isnan(x) else x

    return {"min_count": d.min_count, "users": d.users, "lift": num(d.lift),
            "adjusted_lift": num(d.adjusted_lift), "ci_low": num(d.ci_low),
            "ci_high": num(d.ci_high), "q_value": num(d.q_value), "p_value": num(d.p_value),
            "too_few_users": d.too_few_users, "text": d.text}


def _driver(d: insights.Driver) -> pb.Driver:
    return pb.Driver(event_type=d.event_type, retained_if_reached=d.outcome_if_reached,
                     retained_if_not=d.outcome_if_not, **_figures(d))


def _flow(d: insights.Driver) -> pb.ChurnFlow:
    f = _figures(d)
    del f["min_count"]
    return pb.ChurnFlow(flow=d.flow, step=d.step, churn_if_abandoned=d.outcome_if_reached,
                        churn_if_not=d.outcome_if_not, **f)


def _value_driver(d: insights.Driver) -> pb.ValueDriver:
    return pb.ValueDriver(event_type=d.event_type, top_if_reached=d.outcome_if_reached,
                          top_if_not=d.outcome_if_not, **_figures(d))


class InsightsServicer(pb_grpc.InsightsServiceServicer):
    def __init__(self, store: Store, clock: Clock, readiness: Readiness,
                 flush: Callable[[], None] = lambda: None,
                 value_property: str = "amount",
                 gather: Callable[[grpc.ServicerContext], insights.Population] | None = None,
                 ) -> None:
        self.store = store
        # Cluster mode: every partition's summaries, from the nodes serving them
        # (cluster_service.py); one machine: this store's.
        self._gather = gather
        # The number property ingest sums into the summaries (insights_value_property).
        self.value_property = value_property
        self.clock = clock
        self.readiness = readiness
        # The summaries are written behind Track: an analysis first stores what is pending,
        # so every event acknowledged before the call counts.
        self._flush = flush
        # One analysis at a time: each decodes every user's summary (about 1 GB at a
        # million users); concurrent callers wait their turn instead of multiplying that.
        self._one_at_a_time = threading.Lock()

    def _population(self, context: grpc.ServicerContext) -> insights.Population:
        if self._gather is not None:
            return self._gather(context)
        self._flush()
        with self.store.read() as txn:
            return insights.load_population(txn, self.store.dbs)

    def RetentionDrivers(
        self, request: pb.RetentionDriversRequest, context: grpc.ServicerContext
    ) -> pb.RetentionDriversResponse:
        self.readiness.check()
        query = insights.RetentionQuery(
            cohort=_cohort(request, self.clock.now()),
            early_days=_positive(request.early_days, "early_days", 7, insights.MAX_EARLY_DAYS),
            retained_from_day=(request.retained_from_day
                               if request.HasField("retained_from_day") else 60),
            retained_to_day=_positive(request.retained_to_day, "retained_to_day", 90, 400),
            retained_event_types=_types(request.retained_event_types, "retained_event_types"),
            max_drivers=_positive(request.max_drivers, "max_drivers", 10, 1000),
            max_threshold=_positive(request.max_threshold, "max_threshold",
                                    insights.MAX_THRESHOLD, 100),
            min_users=_positive(request.min_users, "min_users", insights.MIN_USERS, 10**9),
        )
        with self._one_at_a_time:
            found = insights.retention_drivers(self._population(context), query)
        return pb.RetentionDriversResponse(
            cohort_users=found.cohort_users, judged_users=found.judged_users,
            too_young=found.too_young, retention=_rate(found.outcome_rate),
            drivers=[_driver(d) for d in found.drivers],
            underpowered=[_driver(d) for d in found.underpowered], tests=found.tested)

    def ChurnFlows(
        self, request: pb.ChurnFlowsRequest, context: grpc.ServicerContext
    ) -> pb.ChurnFlowsResponse:
        self.readiness.check()
        flow_type = request.flow_event_type or "flow_abandoned"
        check_event_type(flow_type, "flow_event_type")
        query = insights.ChurnQuery(
            cohort=_cohort(request, self.clock.now()),
            early_days=_positive(request.early_days, "early_days", 14, insights.MAX_EARLY_DAYS),
            retained_from_day=(request.retained_from_day
                               if request.HasField("retained_from_day") else 60),
            retained_to_day=_positive(request.retained_to_day, "retained_to_day", 90, 400),
            flow_event_type=flow_type,
            max_flows=_positive(request.max_flows, "max_flows", 10, 1000),
            min_users=_positive(request.min_users, "min_users", insights.MIN_USERS, 10**9),
        )
        with self._one_at_a_time:
            found = insights.churn_flows(self._population(context), query)
        return pb.ChurnFlowsResponse(
            cohort_users=found.cohort_users, judged_users=found.judged_users,
            too_young=found.too_young, churn_rate=_rate(found.outcome_rate),
            flows=[_flow(d) for d in found.drivers],
            underpowered=[_flow(d) for d in found.underpowered], tests=found.tested)

    def ValueDrivers(
        self, request: pb.ValueDriversRequest, context: grpc.ServicerContext
    ) -> pb.ValueDriversResponse:
        self.readiness.check()
        if request.value_property and request.value_property != self.value_property:
            raise InvalidArgument(
                "value_property",
                f"the summaries sum {self.value_property!r} (the server's "
                f"insights_value_property, fixed when events are stored), not "
                f"{request.value_property!r}")
        top = request.top_fraction or 0.1
        if not 0.0 < top < 1.0:
            raise InvalidArgument("top_fraction", f"must be in [0, 1) (0: 0.1), got {top}")
        query = insights.ValueQuery(
            cohort=_cohort(request, self.clock.now()),
            goal_event_types=_types(request.goal_event_types, "goal_event_types",
                                    ("loan_completed",)),
            value_days=_positive(request.value_days, "value_days", 90, 400),
            early_days=_positive(request.early_days, "early_days", 7, insights.MAX_EARLY_DAYS),
            top_fraction=top,
            max_drivers=_positive(request.max_drivers, "max_drivers", 10, 1000),
            max_threshold=_positive(request.max_threshold, "max_threshold",
                                    insights.MAX_THRESHOLD, 100),
            min_users=_positive(request.min_users, "min_users", insights.MIN_USERS, 10**9),
        )
        with self._one_at_a_time:
            found = insights.value_drivers(self._population(context), query)
        return pb.ValueDriversResponse(
            cohort_users=found.cohort_users, judged_users=found.judged_users,
            too_young=found.too_young, top_value_cut=found.extra.get("value_cut", 0.0),
            drivers=[_value_driver(d) for d in found.drivers],
            underpowered=[_value_driver(d) for d in found.underpowered], tests=found.tested,
            value_property=self.value_property)


def _rate(x: float) -> float:
    return 0.0 if math.isnan(x) else x
