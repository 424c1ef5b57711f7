"""The daemon's own open-file budget (RLIMIT_NOFILE), checked against what its config admits.

A shell or a service manager starts processes with a soft limit of 1024, below the default
``max_connections`` alone. A daemon that ran out answered calls on open connections as the
caller's INVALID_ARGUMENT ("cannot be checked for named pipes: Too many open files"), left new
clients waiting 20 s for a connection, and gRPC logged every second (seen). So the soft limit
is raised to the hard one at start, and a hard limit that cannot cover the config refuses the
start, naming both.
"""
from __future__ import annotations

import os
import resource

from . import named_pipes

# Held by a relayed client connection when the allowlist's front is on (the client's, the
# relay's two ends), or by gRPC's own connection without it.
PER_CONNECTION = {True: 3, False: 1}
# Held by the daemon per sandbox (its channel, a pidfd, the call's detached folders while they
# are sent, a cgroup folder): a generous round figure.
PER_SANDBOX = 16
# The calls' folder checks (named_pipes) run on asyncio's default threads, as many at once as
# it has (min(32, CPUs + 4)), each holding a descriptor per level it is down, and one more.
FOLDER_CHECKS = min(32, (os.cpu_count() or 1) + 4) * (named_pipes.MAX_DEPTH + 2)
# The daemon itself: gRPC's polling and wake-up descriptors, the zygote's control socket, the
# state folder, the metrics server and its scrapes, the log.
BASE = 512


def needed(max_connections: int, sandboxes: int, allowlist: bool) -> int:
    """Descriptors the daemon may hold at once under this config."""
    return PER_CONNECTION[allowlist] * max_connections + PER_SANDBOX * sandboxes + FOLDER_CHECKS + BASE


def raise_limit(max_connections: int, sandboxes: int, allowlist: bool) -> int:
    """Raises the soft RLIMIT_NOFILE to the hard one; returns it. Raises SystemExit (the
    daemon's refusal to start) when the hard limit is below what the config needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed(max_connections, sandboxes, allowlist)
    if hard < want:  # never RLIM_INFINITY: the kernel caps RLIMIT_NOFILE at fs.nr_open
        raise SystemExit(
            f"isorund may hold up to {want} open files with max_connections = {max_connections}"
            f"{' (3 each, with allowed_uids or allowed_gids)' if allowlist else ''} and "
            f"{sandboxes} sandboxes (max_concurrency + pool_size), but this process may open "
            f"{hard} (its hard RLIMIT_NOFILE); raise it (systemd: LimitNOFILE=, a shell: ulimit -Hn)"
            + _what_fits(hard, sandboxes, allowlist))
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _what_fits(hard: int, sandboxes: int, allowlist: bool) -> str:
    """The other way out of a hard limit that is too low, when there is one. Only the
    connections' share shrinks with max_connections: advising to lower it when the rest alone
    is over the limit sent operators to a setting that could not help."""
    fixed = needed(0, sandboxes, allowlist)
    fits = (hard - fixed) // PER_CONNECTION[allowlist]
    if fits >= 1:
        return f" or lower max_connections to at most {fits}"
    advice = (f": even max_connections = 1 does not fit, since {fixed} are needed whatever it is ({BASE} for the "
              f"daemon itself, {FOLDER_CHECKS} for its folder checks, {PER_SANDBOX} for each of its "
              f"{sandboxes} sandboxes)")
    most_sandboxes = (hard - needed(1, 0, allowlist)) // PER_SANDBOX
    if most_sandboxes >= 2:  # max_concurrency and pool_size are at least 1 each
        advice += f"; or lower max_concurrency + pool_size to at most {most_sandboxes}"
    return advice
