"""The server side of the ``nudge`` command: ``serve``, ``token``, ``explain``, ``evaluate``,
``backup``, ``restore``.

The ``nudge`` command (nudge.clients.cli) knows only the client SDK; each package adds its
own subcommands through the ``nudge.commands`` entry points in pyproject.toml, so the
client never imports the server and the server's commands live beside the code they run.
Like uvicorn's CLI, these parse options into a Config and hand it to the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def add_commands(sub: Any) -> None:
    """Add the server's subcommands to the ``nudge`` parser's subparsers."""
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="TOML file with a [server] table (env NUDGE_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 50051; 0 = any)")
    serve.add_argument("--data-dir", help="LMDB folder (default ./nudge-data)")
    serve.add_argument("--campaigns", dest="campaigns_dir", help="folder of campaign TOML files")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics here")
    serve.add_argument("--profile-dir",
                       help="cProfile every handler, write DIR/<Method>.prof at shutdown (slow)")
    serve.add_argument("--workers", type=int,
                       help="server processes sharing the port and the store (default 1)")
    serve.add_argument("--tokens-file", dest="auth_tokens_file",
                       help="require scoped tokens from this file")
    serve.add_argument("--cluster", metavar="URLS",
                       help="cluster mode: NATS JetStream URLs, comma-separated "
                            "(nats://h1:4222,nats://h2:4222,...)")
    serve.add_argument("--node-id", help="this node's stable name in the cluster")
    serve.add_argument("--partitions", type=int, help="user partitions (cluster; default 64)")
    serve.set_defaults(run=_serve)

    cluster = sub.add_parser("cluster", help="a local NATS + nudge cluster on loopback")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_sub.add_parser("up", help="start N NATS servers and N nudge nodes; Ctrl-C "
                                           "stops them all")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--dir", help="data folder (default: a temporary one, removed at stop)")
    up.add_argument("--port", type=int, default=50051, help="first node's gRPC port")
    up.add_argument("--partitions", type=int, default=64)
    cluster.set_defaults(run=_cluster)

    # Its own options (--help) are parsed by nudge.server.offline.evaluate.
    evaluate = sub.add_parser("evaluate", add_help=False,
                              help="estimate another policy's value from the decision log")
    evaluate.set_defaults(run=_evaluate, passthrough=True)

    explain = sub.add_parser("explain", help="why a decision chose what it chose")
    explain.add_argument("decision_id")
    explain.add_argument("--data-dir", default=os.environ.get("NUDGE_DATA_DIR", "nudge-data"),
                         help="the server's data folder (read-only; default ./nudge-data)")
    explain.add_argument("--campaigns", default=os.environ.get("NUDGE_CAMPAIGNS_DIR"),
                         help="campaign folder (default: the shipped campaigns)")
    explain.set_defaults(run=_explain)

    data_dir_default = os.environ.get("NUDGE_DATA_DIR", "nudge-data")
    backup = sub.add_parser("backup", help="consistent hot copy of the store (compacted)")
    backup.add_argument("target", help="new folder for the copy")
    backup.add_argument("--data-dir", default=data_dir_default,
                        help="the server's data folder (default ./nudge-data; may be live)")
    backup.set_defaults(run=_backup)

    restore = sub.add_parser("restore", help="put a backup in place as the store")
    restore.add_argument("backup", help="folder made by nudge backup")
    restore.add_argument("--data-dir", default=data_dir_default,
                         help="the data folder to restore into (default ./nudge-data)")
    restore.add_argument("--force", action="store_true",
                         help="replace the store already there (the server must be stopped)")
    restore.set_defaults(run=_restore)

    token = sub.add_parser("token", help="manage scoped client tokens (server side)")
    token.add_argument("--config", help="server TOML file naming auth_tokens_file")
    token.add_argument("--tokens-file", help="token file (default: auth_tokens_file)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True, help="who holds it, e.g. fraud-engine")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: track, decide, risk, deliveries, insights, admin")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    token.set_defaults(run=_token)


def _serve(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.app import create_server, serve
    from nudge.server.config import ConfigError, load_config
    from nudge.server.decisions.campaign import CampaignError
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
                "profile_dir": args.profile_dir,
                "auth_tokens_file": args.auth_tokens_file,
                "workers": args.workers,
                "cluster": args.cluster,
                "node_id": args.node_id,
                "partitions": args.partitions,
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
        from nudge.server.cluster.workers import serve_workers
        from nudge.server.decisions.campaign import load_campaigns

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


def _cluster(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.cluster.local import run_local_cluster

    return run_local_cluster(args.nodes, args.dir, args.port, args.partitions)


def _token(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.config import ConfigError, load_config
    from nudge.server.rpc.auth import TokenStore, check_scopes

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


def _copied(verb: str, copied: object) -> None:
    from nudge.server.storage.backup import Copied

    assert isinstance(copied, Copied)
    users, events = copied.entries.get("users", 0), copied.entries.get("events", 0)
    print(f"{verb} {copied.path}: {copied.bytes:,} bytes, {users:,} users, {events:,} events "
          f"(schema version {copied.schema_version})")


def _backup(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.errors import StoreError
    from nudge.server.storage.backup import backup

    try:
        _copied("backed up to", backup(args.data_dir, args.target))
    except (OSError, StoreError) as exc:
        print(f"nudge backup: {exc}", file=sys.stderr)
        return 1
    return 0


def _restore(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.errors import StoreError
    from nudge.server.storage.backup import restore

    try:
        _copied("restored", restore(args.backup, args.data_dir, args.force))
    except (OSError, StoreError) as exc:
        print(f"nudge restore: {exc}", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.offline.evaluate import main

    return main(rest)


def _explain(args: argparse.Namespace, rest: list[str]) -> int:
    from nudge.server.offline.explain import main

    return main(args.data_dir, args.decision_id, args.campaigns)
