"""The ``nudge`` command: parses options and hands them to the server or the client.

    nudge serve [--port N] [--data-dir DIR] [--config FILE] [--workers N]
    nudge track --user U --type T [--num amount=5000] [--str step=documentation]
    nudge user U
    nudge decide U [--campaign C] [--top-k 3] [--num balance=1200] [--dry-run]
    nudge outcome DECISION_ID REWARD
    nudge score --user U --amount 120.5 [--country BR] [--merchant-category 5411] ...
    nudge label TRANSACTION_ID fraud|genuine
    nudge health
    nudge demo
    nudge explain DECISION_ID [--data-dir DIR]
    nudge simulate [--decisions 50000] [--seed 0] [--out DIR]
    nudge evaluate --data-dir DIR --policy rulebook,uniform,logged
    nudge bench {kernels,quality,rpc,peers,startup,all,faults} [...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToJson

from nudge.clients.client import Client, make_event, make_transaction

DEFAULT_TARGET = "localhost:50051"


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

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="TOML file with a [server] table (env NUDGE_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 50051; 0 = any)")
    serve.add_argument("--data-dir", help="LMDB folder (default ./nudge-data)")
    serve.add_argument("--campaigns", dest="campaigns_dir", help="folder of campaign TOML files")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics here")
    serve.add_argument("--workers", type=int,
                       help="server processes sharing the port and the store (default 1)")
    serve.add_argument("--tokens-file", dest="auth_tokens_file",
                       help="require scoped tokens from this file")

    track = sub.add_parser("track", help="send one event")
    track.add_argument("--user", required=True)
    track.add_argument("--type", required=True)
    track.add_argument("--num", action="append", default=[], metavar="KEY=NUMBER")
    track.add_argument("--str", action="append", default=[], metavar="KEY=TEXT")
    track.add_argument("--event-id", help="idempotency key (default: a fresh one)")

    user = sub.add_parser("user", help="show what the server knows about a user")
    user.add_argument("user_id")

    decide = sub.add_parser("decide", help="the next best action for a user, now")
    decide.add_argument("user_id")
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

    sub.add_parser("health", help="print the server's health status")
    sub.add_parser("demo", help="the loan-abandonment story end to end, in simulated time")
    # Their own options (--help) are parsed by nudge.bench.bank_sim / nudge.bench.evaluate.
    sub.add_parser("simulate", help="a bank population: nudge vs rulebook, random, oracle",
                   add_help=False)
    sub.add_parser("evaluate", help="estimate another policy's value from the decision log",
                   add_help=False)
    explain = sub.add_parser("explain", help="why a decision chose what it chose")
    explain.add_argument("decision_id")
    explain.add_argument("--data-dir", default=os.environ.get("NUDGE_DATA_DIR", "nudge-data"),
                         help="the server's data folder (read-only; default ./nudge-data)")
    explain.add_argument("--campaigns", default=os.environ.get("NUDGE_CAMPAIGNS_DIR"),
                         help="campaign folder (default: the shipped campaigns)")
    # Its own options (nudge bench --help) are parsed by nudge.bench.cli.
    sub.add_parser("bench", help="latency budgets, peers side by side (see --help)",
                   add_help=False)

    token = sub.add_parser("token", help="manage scoped client tokens (server side)")
    token.add_argument("--config", help="server TOML file naming auth_tokens_file")
    token.add_argument("--tokens-file", help="token file (default: auth_tokens_file)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True, help="who holds it, e.g. fraud-engine")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: track, decide, risk, deliveries, admin")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from nudge.server.app import create_server, serve
    from nudge.server.campaign import CampaignError
    from nudge.server.config import ConfigError, load_config
    from nudge.server.errors import StoreError

    try:
        config = load_config(
            args.config,
            overrides={
                "host": args.host,
                "port": args.port,
                "data_dir": args.data_dir,
                "campaigns_dir": args.campaigns_dir,
                "log_level": args.log_level,
                "metrics_port": args.metrics_port,
                "auth_tokens_file": args.auth_tokens_file,
                "workers": args.workers,
            },
        )
    except ConfigError as exc:
        print(f"nudge serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if config.workers > 1:
        from nudge.server.campaign import load_campaigns
        from nudge.server.workers import serve_workers

        try:  # the workers would each fail on a bad campaign: say it once, here
            load_campaigns(config.campaigns_dir)
        except CampaignError as exc:
            print(f"nudge serve: {exc}", file=sys.stderr)
            return 2
        return serve_workers(config)
    try:
        server = create_server(config)
    except (ConfigError, StoreError, CampaignError, OSError) as exc:
        print(f"nudge serve: {exc}", file=sys.stderr)
        return 2
    serve(server)
    return 0


def _token(args: argparse.Namespace) -> int:
    from nudge.server.auth import TokenStore, check_scopes
    from nudge.server.config import ConfigError, load_config

    path = args.tokens_file
    if path is None:
        try:
            path = load_config(args.config).auth_tokens_file
        except ConfigError as exc:
            print(f"nudge token: {exc}", file=sys.stderr)
            return 2
    if path is None:
        print("nudge token: no token file: give --tokens-file or set auth_tokens_file",
              file=sys.stderr)
        return 2
    store = TokenStore(path)
    try:
        if args.token_command == "create":
            scopes = check_scopes(s.strip() for s in args.scopes.split(",") if s.strip())
            print(store.create(args.name, scopes))
            print("store it now: it cannot be shown again", file=sys.stderr)
        elif args.token_command == "revoke":
            store.revoke(args.token_id)
            print(f"revoked {args.token_id}")
        else:
            for info in store.tokens():
                state = "revoked" if info.revoked else "active"
                print(f"{info.token_id}\t{info.name}\t{','.join(info.scopes)}\t{state}")
    except (KeyError, ValueError) as exc:
        print(f"nudge token: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("bench", "simulate", "evaluate") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    if args.command == "bench":
        from nudge.bench.cli import main as bench_main

        return bench_main(rest)
    if args.command == "simulate":
        from nudge.bench.bank_sim import main as simulate_main

        return simulate_main(rest)
    if args.command == "evaluate":
        from nudge.bench.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if args.command == "explain":
        from nudge.clients.explain import main as explain_main

        return explain_main(args.data_dir, args.decision_id, args.campaigns)
    if args.command == "demo":
        from nudge.clients.demo import run_demo

        run_demo()
        return 0
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
        elif args.command == "decide":
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
            in_baseline = client.label_transaction(args.transaction_id, args.label)
            print("in baseline" if in_baseline else "kept out of the baseline")
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
