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
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway, admin and metrics listeners")
    serve.add_argument("--config", required=True)
    serve.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="gateway processes sharing the port (SO_REUSEPORT); default: one per core",
    )
    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("--config", required=True)
    add_admin_parser(sub)
    add_explain_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; the exit status is returned."""
    args = _parser().parse_args(argv)
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
