"""What a guest may import and which builtins it gets: the rules, as pure data, apart from the
import hook that applies them (``importer.GuestImporter``), so that they are unit-tested
without a sandbox (see ``importer`` for what they mean to a guest)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from unicodedata import normalize

REMOVED_BUILTINS = frozenset({"open", "input", "exit", "quit", "breakpoint", "help",
                              "copyright", "credits", "license"})
# A future statement is an instruction to the compiler; the module it imports holds nothing else.
ALWAYS_ALLOWED = frozenset({"__future__"})
# Modules an allowed module's C code imports while the guest's frame is the current one, so
# that the import comes to the guest's __import__: datetime's strftime, today() and strptime
# need time and _strptime. Allowed with the module that needs them.
IMPLIED = {"datetime": frozenset({"time", "_strptime"})}


def python_name(name: str) -> str:
    """The name a guest's source means by ``name``: Python's parser normalizes identifiers
    (NFKC), so ``def ℌello`` defines ``Hello`` and ``ℌ`` in an expression reads ``H``; a
    function or context entry looked up by its unnormalized name could never be reached. A
    name that is no identifier (``globals()["my-rule"]``) is no source's: left as it is."""
    return name if name.isascii() or not name.isidentifier() else normalize("NFKC", name)


def with_implied(allowed: frozenset[str]) -> frozenset[str]:
    return allowed.union(ALWAYS_ALLOWED, *(IMPLIED.get(name, ()) for name in allowed))


@dataclass(frozen=True)
class ImportPolicy:
    guest_dir: str                      # where the guest folder is visible
    extensions: tuple[str, ...]         # which files count as guest source
    allowed: frozenset[str]             # top-level names importable besides guest modules
    search_paths: tuple[str, ...] = ()  # whitelisted folders, searched for allowed names

    def __post_init__(self):
        object.__setattr__(self, "allowed", with_implied(frozenset(self.allowed)))

    def is_allowed(self, name: str) -> bool:
        return name.partition(".")[0] in self.allowed

    def source_candidates(self, folder: str, name: str) -> list[tuple[str, bool]]:
        """Files that would hold module ``name`` in ``folder``: (path, is_package), in order."""
        base = os.path.join(folder, name)
        return ([(os.path.join(base, "__init__" + ext), True) for ext in self.extensions]
                + [(base + ext, False) for ext in self.extensions])

    def display_name(self, path: str) -> str:
        """The guest folder is shown as "/"; other guest source keeps its visible path."""
        if path.startswith(self.guest_dir + "/"):
            return path[len(self.guest_dir):]
        return path
