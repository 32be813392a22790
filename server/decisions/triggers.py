"""Triggers: an event (with conditions on its properties) starts a journey — a decision
made when the event arrives and scheduled inside the trigger's window.

    [[triggers]]
    event = "flow_abandoned"
    where = { flow = "personal_loan", step = "documentation" }
    window_hours = 24
    cancel_on = ["loan_started_over"]   # the campaign's goal events always cancel too

Conditions compare strings for equality, or numbers with a table such as
``amount = { min = 1000 }``. Errors name the file, the key and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nudge.server.errors import CampaignError

EVENT_TYPE = re.compile(r"[a-z][a-z0-9_.]{0,63}")


class TriggerError(CampaignError):
    """A bad ``[[triggers]]`` table: a campaign file error like any other."""


@dataclass(frozen=True)
class Condition:
    key: str
    equals: str | float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def holds(self, numbers: Mapping[str, float], strings: Mapping[str, str]) -> bool:
        if isinstance(self.equals, str):
            return strings.get(self.key) == self.equals
        value = numbers.get(self.key)
        if value is None:
            return False
        if self.equals is not None and value != self.equals:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum


@dataclass(frozen=True)
class Trigger:
    campaign: str
    event: str
    window_seconds: float
    conditions: tuple[Condition, ...] = ()
    cancel_on: tuple[str, ...] = field(default_factory=tuple)
    # Position among its campaign's [[triggers]]: with the campaign, what a recorded trigger
    # is looked up by (stable when other campaigns are added or removed by a reload).
    index: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.campaign, self.index

    def matches(self, event_type: str, numbers: Mapping[str, float],
                strings: Mapping[str, str]) -> bool:
        return event_type == self.event and all(
            c.holds(numbers, strings) for c in self.conditions
        )


def _fail(source: str, key: str, rule: str) -> TriggerError:
    return TriggerError(f"{source}: {key}: {rule}")


def _condition(key: str, value: Any, where: str, source: str) -> Condition:
    if isinstance(value, str):
        return Condition(key, equals=value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Condition(key, equals=float(value))
    if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
        bounds = {}
        for bound, number in value.items():
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise _fail(source, f"{where}.{key}.{bound}", "must be a number")
            bounds[bound] = float(number)
        return Condition(key, minimum=bounds.get("min"), maximum=bounds.get("max"))
    raise _fail(source, f"{where}.{key}",
                "must be a string, a number, or { min = …, max = … }")


def parse_triggers(
    data: Mapping[str, Any], source: str, campaign: str, goal_events: tuple[str, ...]
) -> tuple[Trigger, ...]:
    """The ``[[triggers]]`` of one campaign's TOML data."""
    raw = data.get("triggers", [])
    if not isinstance(raw, list):
        raise _fail(source, "triggers", "must be an array of tables ([[triggers]])")
    out = []
    for i, spec in enumerate(raw):
        where = f"triggers[{i}]"
        if not isinstance(spec, dict):
            raise _fail(source, where, "must be a table")
        unknown = set(spec) - {"event", "where", "window_hours", "cancel_on"}
        if unknown:
            raise _fail(source, f"{where}.{sorted(unknown)[0]}",
                        "unknown key (expected event, where, window_hours, cancel_on)")
        event = spec.get("event")
        if not isinstance(event, str) or not EVENT_TYPE.fullmatch(event):
            raise _fail(source, f"{where}.event", "must be an event type")
        window = spec.get("window_hours")
        if isinstance(window, bool) or not isinstance(window, int | float) or not (
            0 < window <= 24 * 30
        ):
            raise _fail(source, f"{where}.window_hours", "must be a number of hours in (0, 720]")
        conditions = spec.get("where", {})
        if not isinstance(conditions, dict):
            raise _fail(source, f"{where}.where", "must be a table of property conditions")
        cancel_on = spec.get("cancel_on", [])
        if not isinstance(cancel_on, list) or not all(
            isinstance(e, str) and EVENT_TYPE.fullmatch(e) for e in cancel_on
        ):
            raise _fail(source, f"{where}.cancel_on", "must be a list of event types")
        out.append(
            Trigger(
                campaign=campaign,
                event=event,
                window_seconds=float(window) * 3600.0,
                conditions=tuple(
                    _condition(k, v, f"{where}.where", source) for k, v in conditions.items()
                ),
                cancel_on=tuple(dict.fromkeys([*goal_events, *cancel_on])),
                index=i,
            )
        )
    return tuple(out)
