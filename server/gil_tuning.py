"""How long a thread running Python keeps the GIL once a request's thread asks for it.

A nudge server is one interpreter: the gRPC handlers share the GIL with the background
threads that apply Track's events (the group-commit writer, with the risk engine's and the
insights summary's hooks), flush the decision log and learn from outcomes. A request hands
the GIL back several times on its way (grpc's poller passes the call to a worker thread,
an LMDB read or a kernel releases it, the reply goes back through grpc's C core), and each
time it must win it back. When a background thread is running Python at that moment, the
interpreter lets it keep the GIL until the *switch interval* has passed since the request's
thread asked (``sys.setswitchinterval``; 5 ms by default): a handler whose own work is a few
hundred microseconds can wait several milliseconds, and that shows at p99, not p50.

A shorter interval bounds each such wait; the price is more GIL hand-offs for the
background threads, i.e. a little throughput. ``gil_switch_interval_ms`` (config,
``NUDGE_GIL_SWITCH_INTERVAL_MS``) sets it for the serving process; 0 leaves the
interpreter's own. ``nudge bench background`` (bench/background.py) measures Decide,
GetUser and Echo with the server quiet, ingesting a steady stream and learning from
outcomes, one server per interval, so the effect is measured on the machine that serves.
Measured on the 2-core reference box (2026-12-03, quiet): 1 ms was no better than 5 ms
(Decide's p99 under 5,000 ingested transactions/s 4.2-4.9x its quiet p99 against
3.3-4.6x), so the default leaves the interpreter's own (README "Background work and a
request's latency").
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def set_switch_interval(milliseconds: float) -> None:
    """Hand the GIL over after ``milliseconds`` once another thread waits (0: leave the
    interpreter's setting)."""
    if milliseconds > 0:
        sys.setswitchinterval(milliseconds / 1000.0)
    log.info("GIL switch interval %g ms", sys.getswitchinterval() * 1000.0)
