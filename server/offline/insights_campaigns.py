"""``nudge insights suggest``: the top findings as campaign files a marketer reviews and drops
into the campaigns folder (``nudge serve --campaigns DIR``).

- A retention driver becomes a campaign whose **goal is the behaviour** (the driver's
  event type), meant for new users who have not reached it yet: the app asks ``Decide``
  with the campaign's name for users in their first days; the driver's own event type is
  in ``[context]`` (how far the user already is, as a decayed count), with the insight
  flag itself (``reached = [{ event, at_least, within_days }]``: 1 once the user did it
  the driver's number of times in the early window, read by the server at Decide), so
  the policy learns whom the nudge still helps; and a generous
  ``holdout`` measures whether pushing the behaviour really adds retention — the insight
  is an association adjusted for activity, the holdout is the experiment that confirms it.
- A churn flow becomes a **trigger on its abandonment** (``[[triggers]]`` with the flow
  and step), whose goal is the flow's completion event (``<flow>_completed`` by
  convention: the marketer checks the name).

Every file is parsed with the server's own campaign parser before it is written, so what
``suggest`` writes loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nudge.server.decisions.campaign import parse_campaign
from nudge.server.offline.insights import Driver, Findings

NAME_CHARS = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class Suggestion:
    name: str
    path: Path
    finding: str


def _name(*parts: str) -> str:
    name = NAME_CHARS.sub("_", "_".join(parts).lower()).strip("_")
    if not name or not name[0].isalpha():
        name = "insight_" + name
    return name[:64].rstrip("_")


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _common(goal_events: list[str], context_types: list[str], holdout: float,
            reached: str = "") -> str:
    goal = ", ".join(_toml_string(e) for e in goal_events)
    context = ", ".join(_toml_string(e) for e in dict.fromkeys(context_types))
    return f"""
[channels]
values = ["push", "in_app", "email"]

[send_times]
now = "now"
evening = "19:00"

[frequencies]
once = {{ count = 1 }}

[offers]
none = {{}}

[goal]
events = [{goal}]
value = 1.0
window_hours = 72
opt_out_cost = 5.0
contact_cost = 0.02

[guardrails]
consent = true
quiet_hours = {{ start = "21:00", end = "08:00" }}
# Users held out at random: the campaign's own measure of whether the behaviour, pushed,
# adds what the insight says it goes with.
holdout = {holdout}

[context]
event_types = [{context}]
{reached}"""


def driver_campaign(d: Driver, early_days: int) -> tuple[str, str]:
    """(name, TOML) of the campaign that nudges new users towards a retention driver."""
    name = _name("insight", d.event_type, str(d.min_count))
    times = f"{d.min_count} time{'s' if d.min_count > 1 else ''}"
    text = f"""# Suggested by `nudge insights suggest` from a retention driver; review before use.
# Finding: {d.text}
# Use: call Decide with campaign = "{name}" for users in their first {early_days} days who
# have not done {d.event_type} {times} yet (the goal is one more {d.event_type}).
[campaign]
name = "{name}"
description = {_toml_string(f"Help new users reach {d.event_type} ({times} in their first "
                            f"{early_days} days): {100 * d.adjusted_lift:+.0f} points of "
                            "retention beyond activity.")}

[messages]
nudge = {_toml_string(f"Have you tried {d.event_type.replace('_', ' ')}? It takes a minute.")}
benefit = {_toml_string(f"Customers who use {d.event_type.replace('_', ' ')} get more out "
                        "of their account. Try it today.")}
""" + _common([d.event_type], [d.event_type, "app_opened"], holdout=0.2,
              reached=f"# 1 once the user did {d.event_type} {times} in their first "
                      f"{early_days} days (the insight flag).\n"
                      f"reached = [{{ event = {_toml_string(d.event_type)}, "
                      f"at_least = {d.min_count}, within_days = {early_days} }}]\n")
    return name, text


def flow_campaign(d: Driver, flow_event_type: str) -> tuple[str, str]:
    """(name, TOML) of the campaign triggered by abandoning a churn flow step."""
    name = _name("insight", d.flow or "flow", d.step, "abandoned")
    completed = _name(d.flow or "flow", "completed")
    text = f"""# Suggested by `nudge insights suggest` from a churn flow; review before use.
# Finding: {d.text}
# The goal event {completed!r} is a convention: set the event your app sends when the
# flow is completed.
[campaign]
name = "{name}"
description = {_toml_string(f"Bring back users who abandoned {d.flow} at {d.step}: "
                            f"{100 * d.adjusted_lift:+.0f} points of churn beyond activity.")}

[messages]
resume = {_toml_string(f"You were almost done with {d.flow}. Pick up where you left off.")}
help = {_toml_string(f"Stuck at {d.step}? We can help you finish {d.flow} today.")}

[[triggers]]
event = {_toml_string(flow_event_type)}
where = {{ flow = {_toml_string(d.flow)}, step = {_toml_string(d.step)} }}
window_hours = 24
""" + _common([completed], [flow_event_type, "app_opened"], holdout=0.1)
    return name, text


def suggest(retention: Findings, flows: Findings, out: Path, early_days: int,
            flow_event_type: str = "flow_abandoned", top: int = 3,
            max_q: float = 0.05) -> list[Suggestion]:
    """Write a campaign per top finding (positive, q <= ``max_q``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Suggestion] = []
    chosen = [(d, driver_campaign(d, early_days)) for d in retention.drivers
              if d.adjusted_lift > 0 and d.q_value <= max_q][:top]
    chosen += [(d, flow_campaign(d, flow_event_type)) for d in flows.drivers
               if d.adjusted_lift > 0 and d.q_value <= max_q][:top]
    for d, (name, text) in chosen:
        path = out / f"{name}.toml"
        parse_campaign(text, str(path))  # what is written loads
        path.write_text(text)
        written.append(Suggestion(name, path, d.text))
    return written
