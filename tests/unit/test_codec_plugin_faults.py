"""An operator type's own code failing (its encoder, its resolver, the __str__ of what they
raise) fails its value with a SerializationError naming the type (docs/values.md section 5),
SystemExit included; what interrupts the process passes through untouched: KeyboardInterrupt,
and in the sandbox the CPU limit's exception, which the codec cannot import.

The same codec runs in the sandbox; tests/integration/test_types_plugin_faults.py checks the
daemon's [types] and the client's run() end to end.
"""
from __future__ import annotations

import pytest

from isorun import _codec
from isorun.errors import SerializationError
from isorund.sandbox.limits import CpuLimitExceeded


class Thing:
    pass


class Unsayable(Exception):
    def __str__(self):
        raise RuntimeError("no words")


class UnsayableExit(SystemExit):
    def __str__(self):
        raise ValueError("no words either")


def _raise(error):
    def hook(_):
        raise error
    return hook


def registry(encode=lambda t: 1, decode=lambda p: Thing()) -> _codec.TypeRegistry:
    r = _codec.TypeRegistry()
    r.register(Thing, "t.Thing", encode, decode)
    return r


def tagged() -> object:
    return _codec.encode(Thing(), registry())


FAULTS = [
    (lambda: SystemExit(3), "SystemExit: 3"),
    (lambda: SystemExit(), "SystemExit: "),
    (lambda: GeneratorExit("closed"), "GeneratorExit: closed"),
    (lambda: Unsayable(), "Unsayable: <exception str() failed>"),
    (lambda: UnsayableExit(), "UnsayableExit: <exception str() failed>"),
    (lambda: ValueError("plain"), "ValueError: plain"),
]


@pytest.mark.parametrize("make, said", FAULTS)
def test_an_encoder_that_raises_fails_its_value_naming_the_type(make, said):
    with pytest.raises(SerializationError) as info:
        _codec.encode([0, Thing()], registry(encode=_raise(make())))
    message = str(info.value)
    assert message.startswith("cannot encode a value of type 'Thing'"), message
    assert f"its encoder for 't.Thing' raised {said}" in message
    assert info.value.limit is None


@pytest.mark.parametrize("make, said", FAULTS)
def test_a_resolver_that_raises_fails_its_value_naming_the_type(make, said):
    with pytest.raises(SerializationError) as info:
        _codec.decode(_codec.encode([0, Thing()], registry()), registry(decode=_raise(make())))
    message = str(info.value)
    assert message.startswith("cannot decode a value tagged 't.Thing' at [1]: "), message
    assert f"its resolver raised {said}" in message


@pytest.mark.parametrize("half", ["encode", "decode"])
def test_the_encoder_and_resolver_said_of_their_place_in_the_sandbox(half):
    # the sandbox encodes a result with wrap_read_errors=False: still the type's failure
    hooks = {half: _raise(SystemExit("bye"))}
    with pytest.raises(SerializationError, match=r"^the result: cannot .*raised SystemExit: bye"):
        with _codec.said_of("the result"):
            if half == "encode":
                from google.protobuf import struct_pb2
                _codec.encode_into(struct_pb2.Value(), {"x": Thing()}, registry(**hooks), wrap_read_errors=False)
            else:
                _codec.decode(tagged(), registry(**hooks))


@pytest.mark.parametrize("half", ["encode", "decode"])
def test_a_keyboard_interrupt_in_a_types_code_passes_through(half):
    hooks = {half: _raise(KeyboardInterrupt())}
    with pytest.raises(KeyboardInterrupt):
        if half == "encode":
            _codec.encode(Thing(), registry(**hooks))
        else:
            _codec.decode(tagged(), registry(**hooks))


@pytest.mark.parametrize("half", ["encode", "decode"])
def test_the_cpu_limit_in_a_types_code_passes_through(half):
    # (raised from SIGXCPU in the sandbox, while the type's code runs: the call's outcome is
    # that limit, not a SerializationError)
    try:
        hooks = {half: _raise(CpuLimitExceeded())}
        with pytest.raises(CpuLimitExceeded):
            if half == "encode":
                _codec.encode([Thing()], registry(**hooks))
            else:
                _codec.decode(tagged(), registry(**hooks))
    finally:
        CpuLimitExceeded.raised = False


def test_the_cpu_limit_in_the_str_of_what_a_resolver_raised_passes_through():
    class SpentWhileSaid(Exception):
        def __str__(self):
            raise CpuLimitExceeded()
    try:
        with pytest.raises(CpuLimitExceeded):
            _codec.decode(tagged(), registry(decode=_raise(SpentWhileSaid())))
    finally:
        CpuLimitExceeded.raised = False
