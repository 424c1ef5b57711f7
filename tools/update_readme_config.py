"""Rewrites the configuration table in README.md from the code's defaults.

The table lives between the lines ``<!-- config-reference:start -->`` and
``<!-- config-reference:end -->`` and is exactly what ``python -m isorund --config-reference``
prints; tests/unit/test_config.py fails when the two differ. Run from the repository root:

    .venv/bin/python tools/update_readme_config.py          # rewrite the region
    .venv/bin/python tools/update_readme_config.py --check  # exit 1 if it is out of date
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from isorund.config import reference  # noqa: E402

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def render(readme: str) -> str:
    """README text with the region between the markers replaced by the reference table."""
    lines = readme.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == START)
        end = next(i for i, line in enumerate(lines) if line.strip() == END and i > start)
    except StopIteration:
        raise SystemExit(f"README.md has no region between {START!r} and {END!r} lines; add them "
                         "where the configuration table belongs") from None
    return "".join(lines[:start + 1]) + reference() + "".join(lines[end:])


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md's configuration table is out of date; run tools/update_readme_config.py",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        path.write_text(wanted)
        print("README.md: configuration table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
