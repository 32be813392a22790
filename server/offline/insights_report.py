"""``nudge insights report --out DIR``: the findings as Markdown, JSON, a Compass-style heat
map (PNG) and one static HTML page with the tables and the picture (embedded, so the page
is a single file to mail or attach to a ticket).

The heat map has an event type per row and an early window (1, 2, ... days) per column;
the colour is the event's activity-adjusted lift at its best threshold for that window
(blank: nothing testable). matplotlib (the ``bench`` extra) draws it; without it the
report is written without the picture and says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge.server.offline import insights
from nudge.server.offline.insights import Driver, Findings

HEATMAP_DAYS = (1, 2, 3, 5, 7, 10, 14)
HEATMAP_ROWS = 14


@dataclass
class Report:
    retention: Findings
    flows: Findings
    value: Findings
    days: tuple[int, ...]
    events: list[str]
    heat: np.ndarray
    query: insights.RetentionQuery

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "retention": self.retention.to_dict(), "churn_flows": self.flows.to_dict(),
            "value": self.value.to_dict(),
            "heatmap": {"days": list(self.days), "events": self.events,
                        "adjusted_lift": [[None if math.isnan(v) else round(float(v), 4)
                                           for v in row] for row in self.heat]},
            "query": {"early_days": self.query.early_days,
                      "retained_from_day": self.query.retained_from_day,
                      "retained_to_day": self.query.retained_to_day,
                      "cohort_start": self.query.cohort.start,
                      "cohort_end": self.query.cohort.end, "now": self.query.cohort.now},
        })


def _clean(value: Any) -> Any:
    """NaN (untested) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def build(pop: insights.Population, retention: insights.RetentionQuery,
          churn: insights.ChurnQuery, value: insights.ValueQuery) -> Report:
    found = insights.retention_drivers(pop, retention)
    every = insights.retention_drivers(
        pop, insights.RetentionQuery(**{**retention.__dict__, "max_drivers": 10**6}))
    events = [d.event_type for d in every.drivers][:HEATMAP_ROWS]
    days = tuple(d for d in HEATMAP_DAYS if d <= insights.MAX_EARLY_DAYS)
    heat = insights.lift_by_day(pop, retention, days, events)
    return Report(found, insights.churn_flows(pop, churn), insights.value_drivers(pop, value),
                  days, events, heat, retention)


def heatmap_png(report: Report) -> bytes | None:
    """The Compass-style heat map as PNG bytes; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    heat = np.ma.masked_invalid(report.heat * 100.0)
    limit = max(5.0, float(np.nanmax(np.abs(report.heat))) * 100.0) if report.heat.size \
        and np.isfinite(report.heat).any() else 5.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(report.days),
                                    1.4 + 0.42 * max(len(report.events), 1)), dpi=110)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#eeeeee")
    image = ax.imshow(heat, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(report.days)), [str(d) for d in report.days])
    ax.set_yticks(range(len(report.events)), report.events)
    ax.set_xlabel("early window (days since first seen)")
    for i in range(heat.shape[0]):
        for j in range(heat.shape[1]):
            if not np.ma.is_masked(heat[i, j]):
                ax.text(j, i, f"{heat[i, j]:+.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="adjusted lift (points of retention)")
    q = report.query
    ax.set_title(f"Retention at day {q.retained_from_day}-{q.retained_to_day}: "
                 "lift beyond activity", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.1f}"


def _q(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2g}"


HEADERS = ("rank", "behaviour", "threshold", "users", "if reached", "if not", "raw lift",
           "adjusted lift", "95% CI", "q")


def _rows(drivers: list[Driver], flows: bool = False) -> list[list[str]]:
    return [[str(i + 1), f"{d.flow} / {d.step}" if flows else d.event_type,
             "1" if flows else f">= {d.min_count}", f"{d.users:,}",
             _pct(d.outcome_if_reached), _pct(d.outcome_if_not), _pts(d.lift),
             _pts(d.adjusted_lift), f"{_pts(d.ci_low)} to {_pts(d.ci_high)}", _q(d.q_value)]
            for i, d in enumerate(drivers)]


def _sections(report: Report) -> list[tuple[str, str, list[list[str]], list[str]]]:
    """(title, summary, table rows, sentences) per analysis."""
    q = report.query
    r, f, v = report.retention, report.flows, report.value
    return [
        (f"Retention drivers (first {q.early_days} days -> active at day "
         f"{q.retained_from_day}-{q.retained_to_day})",
         f"{r.cohort_users:,} users in the cohort, {r.judged_users:,} old enough to judge "
         f"({r.too_young:,} too young); retention {_pct(r.outcome_rate)}; {r.tested} "
         "event x threshold comparisons tested.",
         _rows(r.drivers), [d.text for d in r.drivers[:5]]),
        ("Abandoned flows that go with churn",
         f"{f.judged_users:,} users judged; churn {_pct(f.outcome_rate)}; {f.tested} flow "
         "steps tested.", _rows(f.drivers, flows=True), [d.text for d in f.drivers[:5]]),
        ("What the top value group engages with",
         f"{v.judged_users:,} users judged; top value group from "
         f"{v.extra.get('value_cut', 0.0):,.0f} ({_pct(v.outcome_rate)} of users).",
         _rows(v.drivers), [d.text for d in v.drivers[:5]]),
    ]


def markdown(report: Report, picture: str | None) -> str:
    lines = ["# nudge insights", "",
             "Effects are estimated within users of similar early activity (an activity score: "
             "every event type's early count and days active, each weighed by what it says "
             "about activity; Mantel-Haenszel risk difference), in points of probability, "
             "with 95% intervals and Benjamini-Hochberg q-values.", ""]
    if picture:
        lines += [f"![Compass heat map: adjusted lift by early window]({picture})", ""]
    for title, summary, rows, sentences in _sections(report):
        lines += [f"## {title}", "", summary, ""]
        if rows:
            lines += ["| " + " | ".join(HEADERS) + " |",
                      "|" + "|".join("---:" if i else "---" for i in range(len(HEADERS))) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += [f"- {s}" for s in sentences] + [""]
    underpowered = report.retention.underpowered
    if underpowered:
        lines += ["Too few users to tell: " + ", ".join(d.event_type for d in underpowered),
                  ""]
    return "\n".join(lines)


def html_page(report: Report, png: bytes | None) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<title>nudge insights</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}",
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:.3em .6em;text-align:right}td:nth-child(2),th:nth-child(2){text-align:"
             "left}th{background:#f4f4f4}img{max-width:100%}</style></head><body>",
             "<h1>nudge insights</h1>",
             "<p>Effects are estimated within users of similar early activity, in points of "
             "probability, with 95% intervals and Benjamini-Hochberg q-values.</p>"]
    if png is not None:
        data = base64.b64encode(png).decode()
        parts.append(f"<img id='compass' alt='Compass heat map' src='data:image/png;base64,"
                     f"{data}'>")
    else:
        parts.append("<p>(No heat map: matplotlib is not installed.)</p>")
    for n, (title, summary, rows, sentences) in enumerate(_sections(report)):
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(summary)}</p>",
                  f"<table id='table{n}'><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEADERS)
                  + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table><ul>" + "".join(f"<li>{e(s)}</li>" for s in sentences)
                     + "</ul>")
    # Lets a headless browser report that the page (and its picture) rendered.
    parts.append("<script>window.addEventListener('load',function(){var i=document."
                 "getElementById('compass');document.body.setAttribute('data-rendered',"
                 "i?String(i.naturalWidth>0):'no-picture');});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, out: Path) -> dict[str, Path]:
    """insights.json, insights.md, compass.png (with matplotlib), insights.html."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "insights.json", "markdown": out / "insights.md",
             "html": out / "insights.html"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    png = heatmap_png(report)
    if png is not None:
        paths["png"] = out / "compass.png"
        paths["png"].write_bytes(png)
    paths["markdown"].write_text(markdown(report, "compass.png" if png else None))
    paths["html"].write_text(html_page(report, png))
    return paths
