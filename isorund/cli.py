"""``isorund`` / ``python -m isorund``: runs the daemon in the foreground."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from .config import Config, ConfigError, reference


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="isorund", description="Runs untrusted Python functions in per-call sandboxes.")
    p.add_argument("--config", help="TOML config file (see the README's configuration reference)")
    p.add_argument("--socket", help="Unix socket to listen on (overrides the config)")
    p.add_argument("--max-concurrency", type=int, help="sandboxes at once (overrides the config)")
    p.add_argument("--metrics-address", help="host:port of the Prometheus endpoint (overrides the config)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--insecure-no-isolation", action="store_true", default=None,
                   help="DEVELOPMENT ONLY: run guests without kernel isolation")
    p.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")
    p.add_argument("--config-reference", action="store_true", help="print the configuration reference (Markdown) and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.config_reference:
        sys.stdout.write(reference())
        return 0
    overrides = {"socket": args.socket, "max_concurrency": args.max_concurrency,
                 "metrics_address": args.metrics_address, "log_level": args.log_level,
                 "insecure_no_isolation": args.insecure_no_isolation}
    try:
        config = Config.load(args.config, overrides)
    except ConfigError as e:
        print(f"isorund: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s", stream=sys.stderr)
    from .server import Server
    try:
        return asyncio.run(Server(config).serve())
    except SystemExit as e:
        if isinstance(e.code, str):
            logging.getLogger("isorund").error(json.dumps({"event": "fatal", "error": e.code}))
            return 1
        raise
    except RuntimeError as e:
        logging.getLogger("isorund").error(json.dumps({"event": "fatal", "error": str(e)}))
        return 1
