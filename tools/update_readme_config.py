"""Rewrites the configuration tables in README.md and docs/operations.md from the code.

Each table lives between the lines ``<!-- config-reference:start -->`` and
``<!-- config-reference:end -->`` and is exactly what ``python -m isorund --config-reference``
prints; tests/unit/test_config.py fails when one differs. Run from the repository root:

    .venv/bin/python tools/update_readme_config.py          # rewrite the regions
    .venv/bin/python tools/update_readme_config.py --check  # exit 1 if one is out of date
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from isorund.config import reference  # noqa: E402

FILES = ("README.md", "docs/operations.md")
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def render(text: str, name: str = "README.md") -> str:
    """``text`` with the region between the markers replaced by the reference table."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == START)
        end = next(i for i, line in enumerate(lines) if line.strip() == END and i > start)
    except StopIteration:
        raise SystemExit(f"{name} has no region between {START!r} and {END!r} lines; add them "
                         "where the configuration table belongs") from None
    return "".join(lines[:start + 1]) + reference() + "".join(lines[end:])


def main(argv: list[str]) -> int:
    stale = []
    for name in FILES:
        path = ROOT / name
        current = path.read_text()
        wanted = render(current, name)
        if wanted == current:
            continue
        stale.append(name)
        if "--check" not in argv:
            path.write_text(wanted)
            print(f"{name}: configuration table updated")
    if stale and "--check" in argv:
        print(f"out of date: {', '.join(stale)}; run tools/update_readme_config.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
