"""Values cross a real daemon and a real sandbox exactly, in both directions; operator types
configured in [types] meet the client's registered ones; whatever cannot cross fails with a
clear SerializationError (or ResourceLimitError for a too-big result) and the daemon goes on.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

import isorun
from isorun import AsyncCodeRunner, CodeRunner, TypeRegistry, _codec, errors
from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc

from faithful import same

GUEST = '''
def echo(x):
    return x

def inspect(x):
    return [x, type(x).__name__, repr(x)]

def from_context():
    return [when, blob, big, nested]
'''

UTC_PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
ODD_OFFSET = dt.timezone(-dt.timedelta(hours=3, seconds=30, microseconds=7))

# At least one value of every built-in type name, and the edge of each rule.
SAMPLES = [
    None, True, False, 0, -7, 2**53, 2**53 + 1, -(2**53) - 1, 2**70, -(2**64) - 1, 10**200,
    0.1, -2.5, 4.0, -0.0, 1e300, 5e-324, math.inf, -math.inf,
    "", "héllo ✓ 😀", "$type",
    b"", b"\x00\xffbytes", bytearray(b"\x01\x02"), bytearray(),
    (), (1, "two", 3.0), set(), {1, 2, 3}, frozenset({"x", (1, 2)}),
    dt.datetime(2026, 11, 24, 12, 30, 5, 123456), dt.datetime(2026, 11, 24, 12, 30, 5, 123456, tzinfo=dt.timezone.utc),
    dt.datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC_PLUS_0530), dt.datetime(2000, 1, 1, tzinfo=ODD_OFFSET),
    dt.date(2020, 2, 29), dt.time(23, 59, 59), dt.time(8, 0, 0, 250000, tzinfo=ODD_OFFSET),
    dt.timedelta(days=2, microseconds=5), dt.timedelta(seconds=-1), dt.timedelta.max,
    decimal.Decimal("3.14159265358979323846264338327950288419716939937510"), decimal.Decimal("-0.00"),
    decimal.Decimal("1E+3"), decimal.Decimal("-Infinity"), decimal.Decimal("sNaN17"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"), complex(1, -2), complex(0.5, -0.0),
    {1: "one", (2, 3): b"pair", None: {frozenset({4}): 5}}, {"$type": "bytes", "$value": "AP8="},
    {"nested": [b"raw", (1, 2), {dt.date(2000, 1, 1)}, {"deeper": (decimal.Decimal("1.10"), 2**64)}]},
]


def deep_list(n: int) -> list:
    value: list = []
    for _ in range(n - 1):
        value = [value]
    return value


# --------------------------------------------------------------------------- built-ins

@pytest.fixture
def echo(runner):
    return runner({"index.py": GUEST})


@pytest.mark.parametrize("value", SAMPLES, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(SAMPLES)])
def test_every_built_in_type_crosses_a_sandbox_and_back_exactly(echo, value):
    back, guest_type, guest_repr = echo.run("inspect", args=[value])
    assert same(value, back)
    assert guest_type == type(value).__name__  # the guest saw the same type...
    if not isinstance(value, (set, frozenset, dict)):  # (whose repr order may differ)
        assert guest_repr == repr(value)  # ...and the same value


def test_every_sample_at_once_nested_in_args_and_context(echo):
    everything = {"samples": SAMPLES, "as_tuple": tuple(SAMPLES[:20]), 7: [SAMPLES]}
    assert same(everything, echo.run("echo", args=[everything]))
    context = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC_PLUS_0530), "blob": b"\x00" * 300,
               "big": -(2**100), "nested": {"set": {1.5, -0.0}, (1, 2): [decimal.Decimal("NaN")]}}
    back = echo.run("from_context", context=context)
    assert same(back[:3], [context["when"], context["blob"], context["big"]])
    assert back[3]["set"] == {1.5, 0.0} and math.copysign(1, min(back[3]["set"])) == -1
    assert back[3][(1, 2)][0].is_nan()


def test_results_built_by_the_guest_come_back_with_their_types(runner):
    r = runner({"index.py": '''
        import datetime, decimal, uuid, math
        def build():
            return {
                "when": datetime.datetime(2026, 5, 17, 8, 30, 0, 999, tzinfo=datetime.timezone(datetime.timedelta(hours=-7))),
                "day": datetime.date(2026, 5, 17), "span": datetime.timedelta(hours=-1),
                "price": decimal.Decimal("19.990"), "id": uuid.UUID(int=1), "z": complex(2, 0),
                "big": 3 ** 100, "float": 10.0, "nan": math.nan, (1, "k"): frozenset({b"v"}),
            }
    '''})
    back = r.run("build")
    assert same(back["when"], dt.datetime(2026, 5, 17, 8, 30, 0, 999, tzinfo=dt.timezone(dt.timedelta(hours=-7))))
    assert same(back["price"], decimal.Decimal("19.990")) and same(back["big"], 3**100)
    assert same(back["float"], 10.0) and math.isnan(back["nan"]) and same(back["z"], complex(2, 0))
    assert same(back[(1, "k")], frozenset({b"v"}))
    assert same(back["span"], dt.timedelta(hours=-1)) and same(back["id"], uuid.UUID(int=1))


def test_the_async_runner_uses_the_same_codec(daemon, make_root):
    async def main():
        async with AsyncCodeRunner(root=make_root({"index.py": GUEST}), file="index.py",
                                   socket=daemon.socket) as r:
            return await r.run("echo", args=[SAMPLES])
    assert same(SAMPLES, asyncio.run(main()))


def test_the_daemon_offers_exactly_the_built_in_names_by_default(echo):
    assert list(echo.capabilities().type_names) == sorted(_codec.BUILTIN_NAMES)


# ----------------------------------------------------------------------- operator types

# The [types] plugin module, shared with the Node client's tests.
ACME_TYPES = (Path(__file__).resolve().parent.parent / "plugins" / "acme_types.py").read_text()

TYPED_CONFIG = '''
plugin_paths = ["{plugins}", "%s"]

[types]
"acme.Money" = "acme_types:money"
"acme.Coupon" = "acme_types:coupon"

[limits]
result_bytes = 65536
'''

MONEY_GUEST = '''
def double(m):
    return m.doubled()

def describe(m):
    return [type(m).__name__, type(m).__module__, m.amount, m.currency]

def wallet(items, owner):
    return {"owner": owner, "items": tuple(items), "total": sum(m.amount for m in items)}

def big(n):
    return "x" * n

def many(n):
    return list(range(n))

def echo(x):
    return x
'''


class Money:
    """The client's own class for acme.Money: only the payload is shared with the daemon."""

    def __init__(self, amount: decimal.Decimal, currency: str):
        self.amount, self.currency = amount, currency

    def __eq__(self, other):
        return type(other) is Money and (self.amount, self.currency) == (other.amount, other.currency)

    __hash__ = None


class Coupon:
    def __init__(self, code: str):
        self.code = code


def money_registry() -> TypeRegistry:
    registry = TypeRegistry()
    registry.register(Money, "acme.Money", lambda m: [str(m.amount), m.currency],
                      lambda p: Money(decimal.Decimal(p[0]), p[1]))
    return registry


@pytest.fixture(scope="module")
def typed_daemon(start_daemon_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("acme_types")
    (folder / "acme_types.py").write_text(ACME_TYPES)
    return start_daemon_session(config=TYPED_CONFIG % folder)


@pytest.fixture
def typed(typed_daemon, make_root):
    made = []

    def make(files=None, **options):
        r = CodeRunner(root=make_root(files or {"index.py": MONEY_GUEST}), file="index.py",
                       socket=typed_daemon.socket, **options)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def test_an_operator_type_crosses_both_ways_through_its_resolver(typed):
    r = typed(registry=money_registry())
    assert r.run("describe", args=[Money(decimal.Decimal("9.99"), "EUR")]) == \
        ["Money", "acme_types", decimal.Decimal("9.99"), "EUR"]
    assert r.run("double", args=[Money(decimal.Decimal("1.25"), "USD")]) == Money(decimal.Decimal("2.50"), "USD")
    items = [Money(decimal.Decimal("1"), "EUR"), Money(decimal.Decimal("2.5"), "EUR")]
    back = r.run("wallet", args=[items, "ann"])
    assert back == {"owner": "ann", "items": (Money(decimal.Decimal("1"), "EUR"), Money(decimal.Decimal("2.5"), "EUR")),
                    "total": decimal.Decimal("3.5")}
    assert type(back["items"]) is tuple


def test_an_operator_type_in_context_reaches_the_guest(typed):
    r = typed({"index.py": "def f():\n    return [type(price).__name__, price.amount, price.doubled()]\n"},
              registry=money_registry())
    assert r.run("f", context={"price": Money(decimal.Decimal("0.10"), "EUR")}) == \
        ["Money", decimal.Decimal("0.10"), Money(decimal.Decimal("0.20"), "EUR")]


@pytest.mark.parametrize("kind", ["CodeRunner", "AsyncCodeRunner"])
def test_a_runner_asks_again_for_a_type_a_restarted_daemon_now_has(start_daemon, make_root, tmp_path, kind):
    # It asked once per channel: a long-lived runner refused acme.Money for ever after the
    # operator restarted the daemon with the type configured, until the runner was made anew.
    (tmp_path / "acme_types.py").write_text(ACME_TYPES)
    plain = start_daemon()
    price = Money(decimal.Decimal("1.25"), "USD")

    def restart_with_the_type():
        assert plain.stop() == 0
        typed = start_daemon(config=TYPED_CONFIG % tmp_path, args=["--socket", plain.socket], wait=False)
        deadline = time.monotonic() + 60
        while '"event": "ready"' not in typed.log():
            assert typed.proc.poll() is None and time.monotonic() < deadline, typed.log()
            time.sleep(0.05)
    options = dict(root=make_root({"index.py": MONEY_GUEST}), file="index.py", socket=plain.socket,
                   registry=money_registry())
    if kind == "CodeRunner":
        with CodeRunner(**options) as r:
            with pytest.raises(errors.SerializationError, match="has no resolver for type 'acme.Money'"):
                r.run("double", args=[price])
            restart_with_the_type()
            assert r.run("double", args=[price]) == Money(decimal.Decimal("2.50"), "USD")
    else:
        async def main():
            async with AsyncCodeRunner(**options) as r:
                with pytest.raises(errors.SerializationError, match="has no resolver for type 'acme.Money'"):
                    await r.run("double", args=[price])
                restart_with_the_type()  # (blocks the loop for the restart: nothing else runs on it)
                return await r.run("double", args=[price])
        assert asyncio.run(main()) == Money(decimal.Decimal("2.50"), "USD")


def test_the_daemon_lists_its_operator_types(typed):
    names = list(typed().capabilities().type_names)
    assert names == sorted(_codec.BUILTIN_NAMES | {"acme.Money", "acme.Coupon"})


@pytest.fixture
def coupon_registered():
    """isorun.register_type registers in the process-wide registry; undo it afterwards so no
    other test sees acme.Coupon (there is deliberately no public unregister)."""
    isorun.register_type(Coupon, "acme.Coupon", lambda c: {"code": c.code}, lambda p: Coupon(p["code"]))
    yield
    entry = _codec.default_registry._by_name.pop("acme.Coupon")
    del _codec.default_registry._by_class[entry.cls]


def test_register_type_teaches_every_runner_of_the_process(typed, coupon_registered):
    r = typed({"index.py": "def f(c):\n    return [c.code, type(c).__name__, c]\n"})
    code, guest_type, back = r.run("f", args=[Coupon("SAVE10")])
    assert (code, guest_type) == ("SAVE10", "Coupon")
    assert type(back) is Coupon and back.code == "SAVE10"
    with pytest.raises(ValueError, match="already registered"):
        isorun.register_type(Coupon, "acme.Coupon2", str, str)


def test_a_result_of_an_operator_type_the_client_lacks_names_it(typed):
    r = typed({"index.py": "import acme_types\n\ndef f():\n    return [acme_types.Money(1, 'EUR')]\n"},
              external=["acme_types"])
    with pytest.raises(errors.SerializationError) as info:
        r.run("f")
    assert "'acme.Money'" in str(info.value) and "no resolver" in str(info.value)
    assert typed(external=["acme_types"], registry=money_registry()).run(
        "echo", args=[Money(decimal.Decimal("7"), "EUR")]) == Money(decimal.Decimal("7"), "EUR")


def test_a_type_the_daemon_lacks_fails_before_anything_is_sent(daemon, runner):
    r = runner({"index.py": "def never_called_5e1f(x):\n    return x\n"}, registry=money_registry())
    for call in (lambda: r.run("never_called_5e1f", args=[[1, {"k": Money(decimal.Decimal("1"), "EUR")}]]),
                 lambda: r.run("never_called_5e1f", args=[1], context={"m": (Money(decimal.Decimal("1"), "EUR"),)})):
        with pytest.raises(errors.SerializationError) as info:
            call()
        message = str(info.value)
        assert "'acme.Money'" in message and daemon.socket in message
        assert "offers: " in message and "Decimal" in message and "UUID" in message
    assert "never_called_5e1f" not in daemon.log()  # the daemon never saw the call
    assert r.run("never_called_5e1f", args=[b"ok"]) == b"ok"


# ------------------------------------------------------------------- what cannot cross

@pytest.mark.parametrize(("source", "type_name"), [
    ("def f():\n    return lambda: 1\n", "'function'"),
    ("def f():\n    return (i for i in range(3))\n", "'generator'"),
    ("class Thing:\n    pass\n\ndef f():\n    return {'k': [Thing()]}\n", "'Thing'"),
    ("import math\n\ndef f():\n    return math\n", "'module'"),
    ("class Loud(int):\n    pass\n\ndef f():\n    return Loud(3)\n", "'Loud'"),
    ("def f():\n    return {'s': 'a\\ud800'}\n", "surrogate"),
    ("def f():\n    return [10 ** 4300]\n", "more than 4300 decimal digits"),
])
def test_a_result_that_cannot_be_encoded_is_a_serialization_error_naming_its_type(runner, source, type_name):
    r = runner({"index.py": source + "\ndef ok():\n    return 'still here'\n"})
    with pytest.raises(errors.SerializationError) as info:
        r.run("f")
    assert type_name in str(info.value)
    assert r.run("ok") == "still here"


def test_an_argument_with_no_codec_is_refused_before_sending(echo, daemon):
    class Opaque:
        pass
    with pytest.raises(errors.SerializationError) as info:
        echo.run("echo", args=[{"ok": 1, "bad": Opaque()}])
    assert "argument 0" in str(info.value) and "Opaque" in str(info.value) and "['bad']" in str(info.value)


def test_a_result_over_the_result_size_limit_is_a_resource_limit_error(typed):
    r = typed()
    assert len(r.run("big", args=[60_000])) == 60_000
    for call in (lambda: r.run("big", args=[70_000]), lambda: r.run("many", args=[20_000])):
        with pytest.raises(errors.ResourceLimitError) as info:
            call()
        assert info.value.limit == "result"
        assert "65536 bytes" in str(info.value)
    assert r.run("big", args=[3]) == "xxx"


def test_an_argument_nested_past_the_limit_is_refused_with_a_clear_error(echo):
    assert same(deep_list(45), echo.run("echo", args=[deep_list(45)]))
    for call in (lambda: echo.run("echo", args=[deep_list(46)]),
                 lambda: echo.run("echo", args=[1], context={"x": deep_list(1000)})):
        with pytest.raises(errors.SerializationError) as info:
            call()
        assert "nested too deeply" in str(info.value) and "limit 'depth'" in str(info.value)
    assert echo.run("echo", args=[[1]]) == [1]


def test_a_result_over_the_clients_message_size_names_the_message(start_daemon, make_root):
    # A daemon may allow results above the client's 64 MiB messages; gRPC then refuses the
    # answer, which is a limit on the message, not a full queue.
    d = start_daemon(config="max_request_bytes = 134217728\n[limits]\nresult_bytes = 104857600\n")
    root = make_root({"index.py": "def f():\n    return 'x' * (70 << 20)\n"})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        with pytest.raises(errors.ResourceLimitError) as raised:
            r.run("f")
    assert raised.value.limit == "message"


def test_a_result_nested_past_the_limit_is_a_clear_error(runner):
    r = runner({"index.py": '''
        def deep(n):
            x = []
            for _ in range(n - 1):
                x = [x]
            return x

        def loop():
            x = []
            x.append(x)
            return {"me": x}
    '''})
    assert same(deep_list(45), r.run("deep", args=[45]))
    for call in (lambda: r.run("deep", args=[46]), lambda: r.run("deep", args=[100_000]), lambda: r.run("loop")):
        with pytest.raises(errors.SerializationError) as info:
            call()
        assert "limit 'depth'" in str(info.value) and info.value.limit == "depth"
    assert r.run("deep", args=[2]) == [[]]


def _raw_deep_request(root: str, lists: int) -> pb.RunRequest:
    request = pb.RunRequest(root=root, file="index.py", func_name="echo")
    value = request.args.add()  # built in place: copying would re-parse it
    for _ in range(lists):
        value = value.list_value.values.add()
    value.null_value = struct_pb2.NULL_VALUE
    return request


def test_a_raw_client_sending_values_past_the_limit_gets_an_error_and_the_daemon_goes_on(daemon, make_root, echo):
    # A stub of another language skips our client's checks; the sandbox's decoder holds the line.
    root = make_root({"index.py": GUEST})
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        outcome = stub.Run(_raw_deep_request(root, 47), timeout=30).outcome  # 95 levels: parses, too deep
        assert outcome.WhichOneof("result") == "failure"
        assert outcome.failure.kind == pb.Failure.SERIALIZATION
        assert "limit 'depth'" in outcome.failure.message
        with pytest.raises(grpc.RpcError) as info:  # deeper than protobuf itself will parse
            stub.Run(_raw_deep_request(root, 80), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = pb.RunRequest(root=root, file="index.py", func_name="echo",
                            args=[_codec.encode({"$type": "bytes", "$value": "AP8="}, TypeRegistry())])
        bad.args[0].struct_value.fields["$type"].string_value = "bytes"
        bad.args[0].struct_value.fields["$value"].string_value = "not base64!"
        outcome = stub.Run(bad, timeout=30).outcome
        assert outcome.failure.kind == pb.Failure.SERIALIZATION and "bytes" in outcome.failure.message
    assert echo.run("echo", args=[b"still answering"]) == b"still answering"


def _tagged(type_name: str, payload: str) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.fields["$type"].string_value = type_name
    value.struct_value.fields["$value"].string_value = payload
    return value


@pytest.mark.parametrize("fields, where", [
    ({"args": [struct_pb2.Value(number_value=1), _tagged("bytes", "not base64!")]}, "args[1]: "),
    ({"context": {"when": _tagged("date", "2020-13-45")}}, "context['when']: "),
    ({"args": [_tagged("acme.Nothing", "x")]}, "args[0]: "),
])
def test_a_value_the_sandbox_cannot_decode_is_named_by_its_place_in_the_request(daemon, make_root, fields, where):
    """A raw client's bad value said what was wrong with it but not which one it was."""
    root = make_root({"index.py": GUEST})
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        request = pb.RunRequest(root=root, file="index.py", func_name="echo", **fields)
        outcome = runner_pb2_grpc.RunnerStub(channel).Run(request, timeout=30).outcome
    assert outcome.failure.kind == pb.Failure.SERIALIZATION
    assert outcome.failure.message.startswith(where + "cannot decode a value tagged"), outcome.failure.message


# --------------------------------------------------------------------- daemon config

@pytest.mark.parametrize(("entry", "words"), [
    ('"acme.Broken" = "acme_types:NotAResolver"', "lacks encode, decode"),
    ('"bytes" = "acme_types:money"', "is built in"),
    ('"acme.Missing" = "acme_types:nothing_here"', "cannot load types.acme.Missing"),
])
def test_a_bad_types_entry_stops_the_daemon_naming_it(start_daemon, tmp_path, entry, words):
    (tmp_path / "acme_types.py").write_text(ACME_TYPES)
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n\n[types]\n{entry}\n', wait=False)
    assert d.proc.wait(timeout=60) != 0
    log = d.log()
    assert words in log and entry.split(" = ")[0].strip('"') in log


def test_an_argument_over_the_depth_limit_keeps_its_limit_attribute(runner):
    from isorun import errors
    deep = []
    for _ in range(200):
        deep = [deep]
    r = runner({"index.py": "def f(x):\n    return 1\n"})
    with pytest.raises(errors.SerializationError) as info:
        r.run("f", args=[deep])
    assert info.value.limit == "depth" and "argument 0" in str(info.value)
