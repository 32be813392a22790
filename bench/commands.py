"""The bench side of the ``nudge`` command: ``bench``, ``simulate``, ``demo``.

Added to ``nudge`` through the ``nudge.commands`` entry points (see nudge.server.commands),
so the client package never imports bench; each command parses its own options.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    """Add the bench subcommands to the ``nudge`` parser's subparsers."""
    # Their own options (--help) are parsed by nudge.bench.cli / nudge.bench.bank_sim.
    bench = sub.add_parser("bench", add_help=False,
                           help="latency budgets, peers side by side (see --help)")
    bench.set_defaults(run=_bench, passthrough=True)
    simulate = sub.add_parser("simulate", add_help=False,
                              help="a bank population: nudge vs rulebook, random, oracle")
    simulate.set_defaults(run=_simulate, passthrough=True)
    demo = sub.add_parser("demo", help="the loan-abandonment story end to end, in simulated time")
    demo.set_defaults(run=_demo)


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.bench.cli import main

    return main(rest)


def _simulate(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.bench.bank_sim import main

    return main(rest)


def _demo(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.bench.demo import main

    return main()
