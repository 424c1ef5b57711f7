"""The `isorun` command line's JSON values: one nested deeper than Python's json parses is a
usage error naming the argument or option (status 2), as invalid JSON is, not a traceback."""
from __future__ import annotations

import pytest

from isorun import _cli

CALL = ["call", "--root", "/tmp", "--file", "x.py", "--socket", "/nonexistent.sock", "f"]


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_an_argument_nested_too_deeply_to_parse_is_a_usage_error_naming_it(capsys, depth):
    # a RecursionError: 22 lines of traceback and status 1
    status = _cli.main([*CALL, "1", "[" * depth + "]" * depth])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("isorun: argument 2 ('[[[") and "is nested too deeply for Python's json to parse" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("option", ["--context", "--resolver-options"])
def test_an_option_nested_too_deeply_to_parse_is_a_usage_error_naming_it(capsys, option):
    with pytest.raises(SystemExit) as done:
        _cli.main([*CALL, option, '{"a":' * 1000 + "1" + "}" * 1000])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert f"argument {option}: nested too deeply for Python's json to parse" in err and "Traceback" not in err
