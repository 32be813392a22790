"""``nudge insights suggest`` and ``nudge insights report``: the insights over a store, read
only (beside a running server, like ``nudge explain``).

Added to ``nudge`` through the ``nudge.commands`` entry points (pyproject.toml).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def add_commands(sub: Any) -> None:
    """Add ``insights`` and its subcommands to the ``nudge`` parser's subparsers."""
    parser = sub.add_parser("insights", help="what predicts retention, churn and value; "
                                             "report and campaign suggestions")
    inner = parser.add_subparsers(dest="insights_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=os.environ.get("NUDGE_DATA_DIR", "nudge-data"),
                        help="the server's data folder (read-only; default ./nudge-data)")
    common.add_argument("--cohort-start", help="users first seen from this date (ISO 8601)")
    common.add_argument("--cohort-end", help="... until before this date (ISO 8601)")
    common.add_argument("--now", help="judge as of this date (ISO 8601; default now)")
    common.add_argument("--early-days", type=int, default=7)
    common.add_argument("--retained-from-day", type=int, default=60)
    common.add_argument("--retained-to-day", type=int, default=90)
    common.add_argument("--flow-event-type", default="flow_abandoned")
    common.add_argument("--goal", action="append", dest="goals",
                        help="value goal event type (repeatable; default loan_completed)")
    report = inner.add_parser("report", parents=[common],
                              help="Markdown, JSON, heat map PNG and an HTML page")
    report.add_argument("--out", required=True, help="folder to write the report into")
    report.set_defaults(run=_report)
    suggest = inner.add_parser("suggest", parents=[common],
                               help="campaign files from the top findings")
    suggest.add_argument("--out", required=True,
                         help="folder for the campaign files (review, then copy into the "
                              "campaigns folder)")
    suggest.add_argument("--top", type=int, default=3, help="campaigns per kind (default 3)")
    suggest.set_defaults(run=_suggest)


def _when(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"nudge insights: {name}: not an ISO 8601 date: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _queries(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from nudge.server.offline import insights

    now = _when(args.now, "--now") or time.time()
    cohort = insights.Cohort(_when(args.cohort_start, "--cohort-start"),
                             _when(args.cohort_end, "--cohort-end"), now)
    return (
        insights.RetentionQuery(cohort, early_days=args.early_days,
                                retained_from_day=args.retained_from_day,
                                retained_to_day=args.retained_to_day),
        insights.ChurnQuery(cohort, retained_from_day=args.retained_from_day,
                            retained_to_day=args.retained_to_day,
                            flow_event_type=args.flow_event_type),
        insights.ValueQuery(cohort, goal_event_types=tuple(args.goals or ("loan_completed",)),
                            early_days=args.early_days),
    )


def _population(args: argparse.Namespace) -> Any:
    from nudge.server.offline import insights
    from nudge.server.storage.readonly import ReadOnlyStore

    with ReadOnlyStore(Path(args.data_dir)) as store, store.read() as txn:
        return insights.load_population(txn, store.dbs)


def _report(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.errors import NudgeError
    from nudge.server.offline import insights_report

    try:
        report = insights_report.build(_population(args), *_queries(args))
    except (NudgeError, FileNotFoundError) as exc:
        print(f"nudge insights report: {exc}", file=sys.stderr)
        return 2
    paths = insights_report.write(report, Path(args.out))
    if "png" not in paths:
        print("nudge insights report: no heat map (matplotlib is missing: pip install "
              "'nudge[bench]')", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _suggest(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.errors import NudgeError
    from nudge.server.offline import insights
    from nudge.server.offline.insights_campaigns import suggest

    try:
        pop = _population(args)
        retention, churn, _ = _queries(args)
        written = suggest(insights.retention_drivers(pop, retention),
                          insights.churn_flows(pop, churn), Path(args.out), args.early_days,
                          args.flow_event_type, top=args.top)
    except (NudgeError, FileNotFoundError) as exc:
        print(f"nudge insights suggest: {exc}", file=sys.stderr)
        return 2
    if not written:
        print("nudge insights suggest: no finding with a positive effect and q <= 0.05")
        return 0
    for s in written:
        print(f"{s.path}: {s.finding}")
    return 0
