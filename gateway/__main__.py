"""Entry point: `jobgate serve | check | admin ...`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from .admin import add_admin_parser, admin_main
from .config import ConfigError, load_config
from .explain import add_explain_parser, explain_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobgate", description="Reverse-proxy authentication gateway for CI job tokens."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gateway, admin and metrics listeners")
    serve.add_argument("--config", required=True, metavar="F", help="the YAML config file")
    serve.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help=f"gateway processes sharing the port (SO_REUSEPORT); default: one per core ({os.cpu_count()})",
    )  # fmt: skip
    check = sub.add_parser("check", help="validate a config file (every problem at once) and exit")
    check.add_argument("--config", required=True, metavar="F", help="the YAML config file")
    add_admin_parser(sub)
    add_explain_parser(sub)
    return parser


def _subcommand(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the innermost subcommand `args` names (`jobgate admin job start`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                return _subcommand(action.choices[chosen], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; the exit status is returned."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand that was given them, with its usage
        _subcommand(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "admin":
        return admin_main(args)
    if args.command == "explain":
        return explain_main(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.upstreams)} upstreams)")
        return 0
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported: workers' metrics meet in this directory
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jobgate-metrics-")
    from .observe import setup_logging
    from .server import run

    setup_logging()
    try:
        return run(config, args.config, args.workers)
    finally:
        if args.workers > 1:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
