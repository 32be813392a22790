"""Performance budgets: load ``bench/budgets.toml`` and judge a run's metrics against it.

One file holds every target the issues name, so a reviewer sees them side by side and a
change of target shows up in version control. A run produces a flat ``{metric: value}``
dict; a budget whose metric the run did not measure is "not measured", never "met".
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KINDS = ("ratio", "handler", "kernel", "throughput", "quality", "storage")


@dataclass(frozen=True)
class Budget:
    """One bound on one metric: ``value <= max`` or ``value >= min``."""

    name: str
    metric: str
    kind: str
    issue: str
    max: float | None = None
    min: float | None = None

    @property
    def target(self) -> str:
        return f"≤ {_num(self.max)}" if self.max is not None else f"≥ {_num(self.min)}"

    def met_by(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.max is not None:
            return value <= self.max
        return value >= self.min  # type: ignore[operator]


@dataclass(frozen=True)
class Budgets:
    budgets: tuple[Budget, ...]
    open_loop_p99_ms: float

    def by_metric(self, metric: str) -> Budget | None:
        return next((b for b in self.budgets if b.metric == metric), None)


@dataclass(frozen=True)
class Verdict:
    """A budget and what this run measured for it (``value`` None: not measured)."""

    budget: Budget
    value: float | None

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        return "met" if self.budget.met_by(self.value) else "MISSED"

    def to_dict(self) -> dict:
        b = self.budget
        return {"name": b.name, "metric": b.metric, "kind": b.kind, "issue": b.issue,
                "max": b.max, "min": b.min, "value": self.value, "status": self.status}


def default_path() -> Path:
    """The shipped ``budgets.toml`` (package data of ``nudge.bench``)."""
    return Path(str(resources.files("nudge.bench").joinpath("budgets.toml")))


def load(path: Path | None = None) -> Budgets:
    """Parse and validate a budgets file; errors name the entry and the rule."""
    path = path or default_path()
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if data.get("schema") != 1:
        raise ValueError(f"{path}: schema must be 1, got {data.get('schema')!r}")
    budgets = []
    for i, entry in enumerate(data.get("budget", [])):
        where = f"{path}: budget[{i}]"
        missing = {"name", "metric", "kind", "issue"} - entry.keys()
        if missing:
            raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
        if entry["kind"] not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {entry['kind']!r}")
        if ("max" in entry) == ("min" in entry):
            raise ValueError(f"{where}: give exactly one of max or min")
        budgets.append(Budget(name=entry["name"], metric=entry["metric"], kind=entry["kind"],
                              issue=entry["issue"], max=_float(entry.get("max")),
                              min=_float(entry.get("min"))))
    metrics = [b.metric for b in budgets]
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"{path}: each metric may have one budget")
    p99_ms = float(data.get("open_loop", {}).get("p99_ms", 5.0))
    return Budgets(budgets=tuple(budgets), open_loop_p99_ms=p99_ms)


def judge(budgets: Budgets, metrics: dict[str, float]) -> list[Verdict]:
    """Every budget with the run's value for it (None when the run did not measure it)."""
    return [Verdict(b, metrics.get(b.metric)) for b in budgets.budgets]


def all_met(verdicts: list[Verdict]) -> bool:
    """True when no measured budget was missed."""
    return all(v.status != "MISSED" for v in verdicts)


def _float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 1000 else f"{v:g}"
