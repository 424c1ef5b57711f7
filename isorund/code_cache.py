"""The daemon's code cache: guest modules compiled once per file version, handed to later calls.

Compiling a guest module costs a call 10-25 µs a line, every call (a 300-line module doubled an
echo call's time). A sandbox whose plan asks for it (``report_compiled``) sends the code of the
call's file and of the guest modules its import statements load, as its first event but
console lines (which operator code may print), before any guest code runs
(``isorund.sandbox.importer.preload``); this cache keeps them and puts them in the plans of the
next calls of that file, whose sandboxes use each one only if the source they read has its hash.

Why that can be trusted: the first event of a sandbox (console lines apart) is written by the
runtime before the guest's first line runs (the plan asked for it, so the runtime sends it
whatever it found), and the daemon accepts a ``compiled`` event only ahead of every other event
but console lines, from a call that asked for one. What a guest could send later is never kept,
so no call can leave code for the next ones. The daemon never unmarshals the code; it only
relays bytes between sandboxes.

Staleness is told from the files' versions (inode, size, modification and change times,
``os.stat`` on the host, a few µs a module), and every ``RECHECK_SECONDS`` a call is asked again
anyway: that catches what a version cannot tell (an import that now finds a file that did not
exist, an edit that kept every time). A hash that does not match in the sandbox only costs that
call the compile; the source read is always what runs.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from isorun._proto import sandbox_pb2 as sb
from isorund.plan import MAX_PATH
from isorund.sandbox.compiled import MAX_COMPILED_BYTES, MAX_PRELOAD, CompiledBudget

RECHECK_SECONDS = 60.0
SOURCE_HASH_BYTES = 8  # importlib.util.source_hash
# The ``compiled`` event's frame: its modules, and the few bytes of the event around them.
MAX_EVENT_BYTES = MAX_COMPILED_BYTES + 64
# What an entry holds of the daemon's memory beyond its module's bytes (its key, the message's
# arena, the version, the ordered dict's node): 1,114 bytes of RSS an entry against 137 counted,
# for 50,000 one-line modules. Counted only by the module's bytes, a full 32 MiB cache of small
# modules held ~200 MiB (seen).
ENTRY_OVERHEAD = 1024


@dataclass
class _Entry:
    module: sb.CompiledModule
    version: tuple[int, int, int, int]
    checked_at: float  # when a sandbox last sent it (for the call's file: its imports found again)
    size: int          # the module's bytes, as it travels in a plan
    held: int          # what it holds of the daemon's memory, counted against max_bytes


class CodeCache:
    """Compiled guest modules by (root, guest path), least recently used evicted past
    ``max_bytes`` (0: no cache, and no sandbox is asked for its modules)."""

    def __init__(self, max_bytes: int, clock=time.monotonic):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0    # modules put in plans
        self.stored = 0  # modules received from sandboxes
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def fill(self, plan: sb.CallPlan) -> None:
        """Puts the code known for the call's file and the modules it imports in ``plan``
        (within ``MAX_COMPILED_BYTES``), and asks the sandbox for them when the file is not
        known, a known module changed, or its file was last checked ``RECHECK_SECONDS`` ago. A
        module not known at all does not make it ask: it may be one that does not compile; the
        next check finds it. One known without its code (too large for the event) is not put in
        the plan; what it imports is."""
        if not self.max_bytes:
            return
        main = "/" + plan.file
        entry = self._entries.get((plan.root, main))
        report = entry is None or self._clock() - entry.checked_at > RECHECK_SECONDS
        queue, seen, budget = [main], set(), CompiledBudget()
        while queue and len(seen) < MAX_PRELOAD:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            key = (plan.root, path)
            entry = self._entries.get(key)
            if entry is None:
                continue
            if _version(plan.root, path) != entry.version:
                report = True
                continue
            self._entries.move_to_end(key)
            if entry.module.code and budget.take(entry.size):  # (one sent without code: too large)
                plan.modules.append(entry.module)
                self.hits += 1
            queue.extend(entry.module.imports)
        plan.report_compiled = report

    def store(self, root: str, modules: sb.CompiledModules) -> None:
        """Keeps the modules a sandbox sent as its first event (see the module docstring); a
        module that does not look like one the runtime makes is dropped."""
        if not self.max_bytes:
            return
        now = self._clock()
        for module in modules.modules[:MAX_PRELOAD]:
            if not _well_formed(module):
                continue
            key = (root, module.path)
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.held
            version = (module.inode, module.size, module.mtime_ns, module.ctime_ns)
            # a copy: a part of a parsed message holds the memory of the whole message (the
            # event, up to a megabyte, with the modules this cache dropped or replaces later)
            kept = sb.CompiledModule()
            kept.CopyFrom(module)
            size = kept.ByteSize()
            self._entries[key] = _Entry(kept, version, now, size, size + ENTRY_OVERHEAD)
            self.bytes += size + ENTRY_OVERHEAD
            self.stored += 1
        while self.bytes > self.max_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.held

    def __len__(self) -> int:
        return len(self._entries)


def _version(root: str, path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(root + path)
    except (OSError, ValueError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _well_formed(module: sb.CompiledModule) -> bool:
    return (_guest_path(module.path) and len(module.source_hash) == SOURCE_HASH_BYTES
            and len(module.imports) <= MAX_PRELOAD and all(_guest_path(p) for p in module.imports))


def _guest_path(path: str) -> bool:
    """A normalised absolute path inside the guest folder, as the runtime writes them."""
    return (0 < len(path) <= MAX_PATH and path.startswith("/") and "\0" not in path
            and os.path.normpath(path) == path and path != "/")
