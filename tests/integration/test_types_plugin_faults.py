"""An operator type whose own code fails — the daemon's [types] plugin in the sandbox, or a
type the client registered — fails the value with a SerializationError naming the type
(docs/values.md section 5), a SystemExit or an exception whose __str__ fails too: they were
the guest's GuestError(SystemExit) (before any guest code ran, for an argument's resolver),
a SystemExit escaping run() raw, or a RuntimeError. The call's CPU limit running out inside
the type's code is still that limit. The codec's own cases: tests/unit/test_codec_plugin_faults.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from isorun import CodeRunner, TypeRegistry, errors

FAULTY_TYPES = (Path(__file__).resolve().parent.parent / "plugins" / "faulty_types.py").read_text()

CONFIG = '''
plugin_paths = ["{plugins}", "%s"]

[types]
"faulty.Exits" = "faulty_types:exits"
'''

GUEST = '''
import faulty_types

def take(x):
    return "the guest ran"

def give(mode):
    return faulty_types.Exits(mode)
'''


class Exits:
    """The client's own class for faulty.Exits."""

    def __init__(self, mode):
        self.mode = mode


def client_registry(decode=lambda p: Exits(p)) -> TypeRegistry:
    registry = TypeRegistry()
    registry.register(Exits, "faulty.Exits", lambda e: e.mode, decode)
    return registry


@pytest.fixture(scope="module")
def faulty_daemon(start_daemon_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faulty_types")
    (folder / "faulty_types.py").write_text(FAULTY_TYPES)
    return start_daemon_session(config=CONFIG % folder)


@pytest.fixture
def faulty(faulty_daemon, make_root):
    made = []

    def make(**options):
        r = CodeRunner(root=make_root({"index.py": GUEST}), file="index.py", socket=faulty_daemon.socket,
                       external=["faulty_types"], **options)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


SAID = {"exit": "SystemExit: the type left", "unsayable": "Unsayable: <exception str() failed>"}


@pytest.mark.parametrize("mode", ["exit", "unsayable"])
def test_a_daemon_resolver_that_fails_is_a_serialization_error_naming_the_type(faulty, mode):
    r = faulty(registry=client_registry())
    with pytest.raises(errors.SerializationError) as info:
        r.run("take", args=[Exits(mode)])
    message = str(info.value)
    assert "args[0]: cannot decode a value tagged 'faulty.Exits'" in message, message
    assert f"its resolver raised {SAID[mode]}" in message, message
    assert r.run("take", args=[Exits("fine")]) == "the guest ran"


@pytest.mark.parametrize("mode", ["exit", "unsayable"])
def test_a_daemon_encoder_that_fails_is_a_serialization_error_naming_the_type(faulty, mode):
    r = faulty(registry=client_registry())
    with pytest.raises(errors.SerializationError) as info:
        r.run("give", args=[mode])
    message = str(info.value)
    assert "the result: cannot encode a value of type 'Exits'" in message, message
    assert f"its encoder for 'faulty.Exits' raised {SAID[mode]}" in message, message


def test_a_client_resolver_that_exits_is_a_serialization_error_naming_the_type(faulty):
    def leaves(payload):
        raise SystemExit("the client's type left")
    r = faulty(registry=client_registry(decode=leaves))
    with pytest.raises(errors.SerializationError) as info:
        r.run("give", args=["fine"])
    assert "cannot decode a value tagged 'faulty.Exits'" in str(info.value)
    assert "its resolver raised SystemExit: the client's type left" in str(info.value)


def test_a_client_encoder_whose_exception_cannot_be_said_is_a_serialization_error(faulty):
    class Unsayable(Exception):
        def __str__(self):
            raise RuntimeError("no words")

    def fails(e):
        raise Unsayable()
    registry = TypeRegistry()
    registry.register(Exits, "faulty.Exits", fails, lambda p: Exits(p))
    r = faulty(registry=registry)
    with pytest.raises(errors.SerializationError,
                       match=r"its encoder for 'faulty.Exits' raised Unsayable: <exception str\(\) failed>"):
        r.run("take", args=[Exits("fine")])


def test_the_cpu_limit_running_out_in_a_daemon_resolver_is_still_that_limit(faulty):
    r = faulty(registry=client_registry())
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run("take", args=[Exits("spin")], limits={"cpu_seconds": 1})
    assert info.value.limit == "cpu"
