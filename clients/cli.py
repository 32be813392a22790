"""The ``nudge`` command: client commands here; the server and bench add theirs (COMMANDS_GROUP).

    nudge serve [--port N] [--data-dir DIR] [--config FILE] [--workers N]
    nudge track --user U --type T [--num amount=5000] [--str step=documentation]
    nudge user U
    nudge decide U [--campaign C] [--top-k 3] [--num balance=1200] [--dry-run]
    nudge decide --audience FILE [--campaign C] [--reasons]   (one JSON line per decision)
    nudge outcome DECISION_ID REWARD
    nudge score --user U --amount 120.5 [--country BR] [--merchant-category 5411] ...
    nudge label TRANSACTION_ID fraud|genuine --user USER_ID
    nudge erase U
    nudge health
    nudge demo
    nudge explain DECISION_ID [--data-dir DIR]
    nudge simulate [--decisions 50000] [--seed 0] [--out DIR]
    nudge evaluate --data-dir DIR [--campaign NAME] [--policy uniform,logged,...]
    nudge bench {kernels,quality,rpc,peers,startup,all,faults} [...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points

import grpc
from google.protobuf.json_format import MessageToJson

from nudge.clients.client import Client, make_event, make_transaction

DEFAULT_TARGET = "localhost:50051"
# Packages add subcommands here (pyproject.toml): each entry point names a function that
# adds its parsers and sets ``run(args, rest) -> int`` (``passthrough`` when the command
# parses its own options). The client side needs nothing from them.
COMMANDS_GROUP = "nudge.commands"


def _key_values(items: Sequence[str], convert: type, flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = convert(value)
        except ValueError:
            raise SystemExit(f"{flag} {item!r}: {value!r} is not a number") from None
    return out


def _audience(path: str) -> Iterator[str]:
    """User ids from a file (or stdin for ``-``): one a line, blank lines and ``#``
    comments skipped."""
    with (contextlib.nullcontext(sys.stdin) if path == "-"
          else open(path, encoding="utf-8")) as lines:
        for line in lines:
            user_id = line.strip()
            if user_id and not user_id.startswith("#"):
                yield user_id


def _decide_audience(client: Client, args: argparse.Namespace) -> int:
    if args.user_id is not None:
        print("nudge decide: give a user_id or --audience, not both", file=sys.stderr)
        return 2
    started = time.perf_counter()
    n = 0
    for decision in client.decide_batch(
        _audience(args.audience), campaign=args.campaign, top_k=args.top_k,
        numbers=_key_values(args.num, float, "--num"),
        strings=_key_values(args.str, str, "--str"), dry_run=args.dry_run,
        include_reasons=args.reasons,
    ):
        print(MessageToJson(decision, indent=None))
        n += 1
    print(f"{n:,} decisions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudge", description="nudge decision server")
    parser.add_argument(
        "--target",
        default=os.environ.get("NUDGE_TARGET", DEFAULT_TARGET),
        help="server address for client commands (env NUDGE_TARGET; default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument("--token", default=os.environ.get("NUDGE_TOKEN"),
                        help="scoped token for the server (env NUDGE_TOKEN)")
    parser.add_argument("--ca-file", default=os.environ.get("NUDGE_CA_FILE"),
                        help="CA certificate to trust: connect with TLS (env NUDGE_CA_FILE)")
    parser.add_argument("--cert-file", default=os.environ.get("NUDGE_CERT_FILE"),
                        help="client certificate for mutual TLS (env NUDGE_CERT_FILE)")
    parser.add_argument("--key-file", default=os.environ.get("NUDGE_KEY_FILE"),
                        help="client key for mutual TLS (env NUDGE_KEY_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)

    track = sub.add_parser("track", help="send one event")
    track.add_argument("--user", required=True)
    track.add_argument("--type", required=True)
    track.add_argument("--num", action="append", default=[], metavar="KEY=NUMBER")
    track.add_argument("--str", action="append", default=[], metavar="KEY=TEXT")
    track.add_argument("--event-id", help="idempotency key (default: a fresh one)")

    user = sub.add_parser("user", help="show what the server knows about a user")
    user.add_argument("user_id")

    decide = sub.add_parser("decide", help="the next best action for a user (or an audience), now")
    decide.add_argument("user_id", nargs="?")
    decide.add_argument("--audience", metavar="FILE",
                        help="decide for every user id in FILE (one a line; - reads stdin) "
                        "over one DecideBatch stream; prints one JSON line per decision")
    decide.add_argument("--reasons", action="store_true",
                        help="with --audience: include each decision's reasons")
    decide.add_argument("--campaign", default="", help="campaign name (default: the server's)")
    decide.add_argument("--top-k", type=int, default=3, help="actions to return (default 3)")
    decide.add_argument("--num", action="append", default=[], metavar="KEY=NUMBER")
    decide.add_argument("--str", action="append", default=[], metavar="KEY=TEXT")
    decide.add_argument("--dry-run", action="store_true", help="decide without storing")

    outcome = sub.add_parser("outcome", help="report a decision's reward")
    outcome.add_argument("decision_id")
    outcome.add_argument("reward", type=float)

    score = sub.add_parser("score", help="score one transaction against the user's baseline")
    score.add_argument("--user", required=True)
    score.add_argument("--amount", type=float, required=True)
    score.add_argument("--transaction-id", help="idempotency key (default: a fresh one)")
    score.add_argument("--currency", default="")
    score.add_argument("--merchant-category", default="")
    score.add_argument("--country", default="")
    score.add_argument("--channel", default="")
    score.add_argument("--device-id", default="")

    label = sub.add_parser("label", help="label a scored transaction fraud or genuine")
    label.add_argument("transaction_id")
    label.add_argument("label", choices=("fraud", "genuine"))
    label.add_argument("--user", required=True, help="the user it was scored for")

    erase = sub.add_parser("erase", help="erase everything stored about a user (admin)")
    erase.add_argument("user_id")

    sub.add_parser("health", help="print the server's health status")
    for entry in entry_points(group=COMMANDS_GROUP):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    run = getattr(args, "run", None)
    if not getattr(args, "passthrough", False) and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if run is not None:  # a command another package added (see COMMANDS_GROUP)
        return int(run(args, rest))
    client = Client(args.target, timeout=args.timeout, token=args.token, ca_file=args.ca_file,
                    cert_file=args.cert_file, key_file=args.key_file)
    try:
        if args.command == "track":
            event = make_event(
                args.user,
                args.type,
                numbers=_key_values(args.num, float, "--num"),
                strings=_key_values(args.str, str, "--str"),
                event_id=args.event_id,
            )
            reply = client.track([event])
            print(MessageToJson(reply, always_print_fields_with_no_presence=True))
        elif args.command == "user":
            print(MessageToJson(client.get_user(args.user_id)))
        elif args.command == "decide" and args.audience is not None:
            return _decide_audience(client, args)
        elif args.command == "decide":
            if args.user_id is None:
                parser.error("decide: give a user_id or --audience FILE")
            reply = client.decide(
                args.user_id,
                campaign=args.campaign,
                top_k=args.top_k,
                numbers=_key_values(args.num, float, "--num"),
                strings=_key_values(args.str, str, "--str"),
                dry_run=args.dry_run,
            )
            print(MessageToJson(reply))
        elif args.command == "outcome":
            attributed = client.report_outcome(args.decision_id, args.reward)
            print("attributed" if attributed else "already settled")
        elif args.command == "score":
            tx = make_transaction(
                args.user,
                args.amount,
                transaction_id=args.transaction_id,
                currency=args.currency,
                merchant_category=args.merchant_category,
                country=args.country,
                channel=args.channel,
                device_id=args.device_id,
            )
            print(MessageToJson(client.score_transaction(tx)))
        elif args.command == "label":
            in_baseline = client.label_transaction(
                args.transaction_id, args.label, user_id=args.user)
            print("in baseline" if in_baseline else "kept out of the baseline")
        elif args.command == "erase":
            reply = client.erase_user(args.user_id)
            print(MessageToJson(reply, always_print_fields_with_no_presence=True))
        elif args.command == "health":
            status = client.health()
            print(status)
            return 0 if status == "SERVING" else 1
    except grpc.RpcError as exc:
        print(f"nudge {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
