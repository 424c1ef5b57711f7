"""``isorund`` / ``python -m isorund``: runs the daemon in the foreground.

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when the daemon cannot start or dies,
2 for a bad command line or configuration (the message names the key).
"""
from __future__ import annotations

import argparse
import signal
import sys

from . import __version__

# Command-line flags that override a config key of the same name.
OVERRIDES = (
    ("--socket", str, "Unix socket to listen on"),
    ("--max-concurrency", int, "sandboxes running at once"),
    ("--queue-size", int, "calls that may wait for a sandbox"),
    ("--shutdown-grace", float, "seconds in-flight calls get on SIGTERM"),
    ("--metrics-address", str, "host:port of the Prometheus endpoint"),
)


def parse_args(argv=None) -> argparse.Namespace:
    from .config import LOG_LEVELS

    p = argparse.ArgumentParser(prog="isorund", description="Runs untrusted Python functions in per-call sandboxes.")
    p.add_argument("--version", action="version", version=f"isorund {__version__}")
    p.add_argument("--config", help="TOML config file (reference: docs/operations.md, or --config-reference)")
    for flag, kind, text in OVERRIDES:
        p.add_argument(flag, type=kind, help=f"{text} (overrides the config)")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--insecure-no-isolation", action="store_true", default=None,
                   help="DEVELOPMENT ONLY: run guests without kernel isolation")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (file + flags + defaults) as TOML and exit")
    p.add_argument("--config-reference", action="store_true", help="print the configuration reference (Markdown) and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    held, previous = _hold_stop_signals()
    try:
        return _main(argv, held)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv, held: list[int]) -> int:
    # imported only now, with the stop signals held: the daemon's imports take ~0.1 s
    import asyncio
    import json
    import logging

    from . import logs
    from .config import Config, ConfigError, StartError, reference
    from .memory import keep_freed_memory
    args = parse_args(argv)
    if args.config_reference:
        sys.stdout.write(reference())
        return 0
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _, _ in OVERRIDES}
    overrides.update(log_level=args.log_level, insecure_no_isolation=args.insecure_no_isolation)
    try:
        config = Config.load(args.config, overrides)
    except ConfigError as e:
        print(f"isorund: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(config.to_toml())
        return 0
    logs.configure(config.log_level)
    keep_freed_memory()
    from .server import Server
    try:
        return asyncio.run(Server(config).serve(stopped_before=held))
    except SystemExit as e:
        if isinstance(e.code, str):
            logging.getLogger("isorund").error(json.dumps({"event": "fatal", "error": e.code}))
            return 1
        raise
    except (RuntimeError, OSError) as e:
        said = str(e) if isinstance(e, StartError) else f"{type(e).__name__}: {e}"
        logging.getLogger("isorund").error(json.dumps({"event": "fatal", "error": said}))
        return 1
    finally:
        logs.flush()


def _hold_stop_signals() -> tuple[list[int], dict]:
    """SIGTERM and SIGINT that arrive before the daemon's own handlers are in (it imports gRPC
    and loads its config first), kept for them: the defaults ended it without a word, or with
    a KeyboardInterrupt traceback, where a stop during the start is documented as a clean one.
    Returns the list they land in and the handlers they replaced."""
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    return held, previous
