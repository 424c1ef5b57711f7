"""resolver_options nested deeper than protobuf's parser takes are a SerializationError with
limit "depth", naming the place, raised by the client before anything is sent; they were
counted in JSON levels (up to 100), so that 34 dicts or 49 lists were sent and the sandbox
refused the request (InvalidRequest, "Exceeded upb_DecodeOptions_MaxDepth").

Levels count as the codec counts a value's (docs/values.md section 7), the options at level 0:
a dict's values 3 down, a list's items 2, an empty dict or list 1; at most 100. The deepest
accepted options run through a real daemon (the ``daemon`` fixture, tests/conftest.py).
"""
from __future__ import annotations

import pytest

from isorun import CodeRunner, errors
from isorun import _inputs


def dicts(n: int, inner) -> object:
    for _ in range(n):
        inner = {"k": inner}
    return inner


def lists(n: int, inner) -> object:
    for _ in range(n):
        inner = [inner]
    return inner


# (options with "base" added, the deepest level they reach)
DEEPEST = [
    ({"d": dicts(32, {})}, 100),           # 34 dicts, the innermost empty
    ({"d": dicts(32, 1)}, 99),             # 33 dicts around a number
    ({"l": lists(48, [])}, 100),           # 49 lists in an entry, the innermost empty
    ({"l": lists(48, "s")}, 99),           # 48 lists around a string
    ({"m": {"k": lists(47, 1)}}, 100),     # 2 dicts, then 47 lists around a number
    ({"t": lists(48, ())}, 100),           # a tuple travels as a list (the innermost here)
]
TOO_DEEP = [
    ({"d": dicts(33, {})}, "resolver_options['d']" + "['k']" * 32, 103),
    ({"d": dicts(33, 1)}, "resolver_options['d']" + "['k']" * 32, 102),
    ({"l": lists(49, [])}, "resolver_options['l']" + "[0]" * 48, 101),
    ({"l": lists(49, "s")}, "resolver_options['l']" + "[0]" * 48, 101),
    ({"m": {"k": lists(48, 1)}}, "resolver_options['m']['k']" + "[0]" * 47, 102),
]


def test_the_limit_is_protobufs_own():
    assert _inputs.MAX_OPTIONS_DEPTH == 100


@pytest.mark.parametrize("options, where, level", TOO_DEEP)
def test_options_one_level_too_deep_are_refused_naming_the_place(options, where, level, tmp_path):
    with pytest.raises(errors.SerializationError) as info:
        CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "none.sock"),
                   resolver="prefix", resolver_options=options)
    assert info.value.limit == "depth"
    assert str(info.value).startswith(f"{where} is nested too deeply: more than 100 protobuf levels"), str(info.value)


@pytest.mark.parametrize("make", [
    lambda: (x := {}).update(me=x) or x,
    lambda: {"l": (y := []).append(y) or y},
])
def test_options_that_contain_themselves_are_too_deep(make, tmp_path):
    with pytest.raises(errors.SerializationError) as info:
        CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "none.sock"),
                   resolver="prefix", resolver_options=make())
    assert info.value.limit == "depth"


@pytest.mark.parametrize("options, level", DEEPEST)
def test_the_deepest_options_accepted_run_through_a_daemon(options, level, daemon, make_root):
    root = make_root({"index.py": "def f():\n    return 'ran'\n"})
    with CodeRunner(root=root, file="index.py", socket=daemon.socket, resolver="prefix",
                    resolver_options={"base": root, **options}) as r:
        assert r.run("f") == "ran"


@pytest.mark.parametrize("options, where, level", TOO_DEEP[:2])
def test_options_one_level_too_deep_would_be_refused_by_the_sandbox(options, where, level, daemon, make_root):
    # the bound is protobuf's own, not a stricter one: sent anyway (past the client's check),
    # the sandbox's parser refuses the request
    root = make_root({"index.py": "def f():\n    return 'ran'\n"})
    with CodeRunner(root=root, file="index.py", socket=daemon.socket, resolver="prefix",
                    resolver_options={"base": root}) as r:
        r._template.resolver_options.update(options)
        with pytest.raises(errors.InvalidRequest, match="Exceeded upb_DecodeOptions_MaxDepth"):
            r.run("f")
