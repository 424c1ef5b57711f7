"""The value codec round-trips type() and value exactly, and writes the format docs/values.md
specifies (every example row of that page is checked here).

Limits, registries and malformed input are in test_codec_limits.py.
"""
from __future__ import annotations

import base64
import cmath
import datetime as dt
import decimal
import enum
import json
import math
import re
import uuid
from collections import OrderedDict, defaultdict, namedtuple
from pathlib import Path

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isorun import _codec
from isorun.errors import SerializationError

from faithful import same

settings.register_profile(
    "isorun-codec", deadline=None, max_examples=150, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CODEC = settings.get_profile("isorun-codec")

DOC = Path(__file__).resolve().parents[2] / "docs" / "values.md"


# ------------------------------------------------------------------------ exact comparison

def round_trip(value):
    """Encode, serialize to bytes, parse, decode: what a peer process would see."""
    message = _codec.encode(value)
    return _codec.decode(struct_pb2.Value.FromString(message.SerializeToString()))


# ------------------------------------------------------------------------------ strategies

offsets = st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
                        max_value=dt.timedelta(hours=23, minutes=59, seconds=59))
timezones = st.one_of(st.just(dt.timezone.utc), st.builds(dt.timezone, offsets),
                      st.builds(dt.timezone, st.integers(-14 * 60, 14 * 60).map(
                          lambda m: dt.timedelta(minutes=m))))
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-2**80, max_value=2**80),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, -2**53 - 1, -2**53, 2**64, -(2**64) - 1,
                     2**70, 10**300, -10**1000]),
)
floats = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 4.0, 1e300, -1e-300, 2.0**53,
                                                  2.0**53 + 2, 5e-324, math.inf, -math.inf]))
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(places=6, allow_nan=False, allow_infinity=False),
    st.builds(lambda sign, digits, exp: decimal.Decimal((sign, digits, exp)),
              st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=60).map(tuple),
              st.integers(-10**6, 10**6)),
    st.sampled_from([decimal.Decimal(t) for t in
                     ("-0", "-0.00", "0E-10", "1E+3", "1.000", "NaN", "-NaN", "sNaN", "-sNaN7",
                      "NaN123", "Infinity", "-Infinity")]),
)
datetimes = st.one_of(st.datetimes(), st.datetimes(timezones=timezones))
times = st.one_of(st.times(), st.times(timezones=timezones))
texts = st.one_of(st.text(), st.sampled_from(["$type", "$value", "", "héllo ✓", "\x00", "😀"]))

# Hashable leaves: usable as set items and dict keys (no NaN, which is never equal to itself).
hashable_leaves = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts, st.binary(max_size=20),
    st.dates(), datetimes, times, st.timedeltas(), st.uuids(),
    decimals.filter(lambda d: not d.is_nan()),
    st.complex_numbers(allow_nan=False),
)
hashables = st.one_of(
    hashable_leaves,
    st.tuples(hashable_leaves, hashable_leaves),
    st.frozensets(hashable_leaves, max_size=4),
)
leaves = st.one_of(
    hashable_leaves, floats, decimals, st.complex_numbers(), st.binary(max_size=40).map(bytearray),
)


def containers(children):
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
        st.dictionaries(texts, children, max_size=5),            # may hold "$type": look-alike
        st.dictionaries(hashables, children, max_size=5),        # non-str keys
        st.fixed_dictionaries({"$type": st.sampled_from(["bytes", "int", "acme.Money", ""]),
                               "$value": children}),
    )


values = st.recursive(leaves, containers, max_leaves=30)


# ------------------------------------------------------------------------------ properties

@CODEC
@given(values)
def test_every_supported_value_round_trips_with_its_exact_type(value):
    assert same(value, round_trip(value))


@CODEC
@given(values)
def test_the_encoded_size_is_the_exact_protobuf_size(value):
    message = struct_pb2.Value()
    size = _codec.encode_into(message, value)
    assert size == message.ByteSize() == len(message.SerializeToString())


@CODEC
@given(st.binary(max_size=4096))
def test_bytes_travel_as_the_standard_base64_text(data):
    # The codec uses pybase64 for speed; the wire format stays what any base64 library writes.
    message = _codec.encode(data)
    assert message.struct_value.fields["$value"].string_value == base64.b64encode(data).decode()
    assert _codec.decode(message) == data


# Standard base64 with padding (RFC 4648 section 4), as docs/values.md defines a bytes payload.
RFC_4648_PADDED = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@CODEC
@given(st.text(alphabet="AQgw+/=-_ \n.é", max_size=12))
def test_a_bytes_payload_is_accepted_exactly_when_it_is_padded_standard_base64(text):
    # Stricter than base64.b64decode(validate=True), which lets excess padding through ("AAAA=").
    tagged = struct_pb2.Value()
    tagged.struct_value.fields["$type"].string_value = "bytes"
    tagged.struct_value.fields["$value"].string_value = text
    if RFC_4648_PADDED.fullmatch(text):
        assert _codec.decode(tagged) == base64.b64decode(text)
    else:
        with pytest.raises(SerializationError, match="not valid padded base64"):
            _codec.decode(tagged)


def test_excess_padding_is_refused():
    for text in ("AAAA=", "AAAA==", "AP8==", "A==="):
        tagged = struct_pb2.Value()
        tagged.struct_value.fields["$type"].string_value = "bytes"
        tagged.struct_value.fields["$value"].string_value = text
        with pytest.raises(SerializationError, match="not valid padded base64"):
            _codec.decode(tagged)


@settings(CODEC, max_examples=60)
@given(values)
def test_the_json_form_carries_the_same_value(value):
    # What grpcurl or a JSON-speaking client would send must decode the same way. (Plain
    # numbers survive JSON because integral floats and ints beyond 2**53 are tagged.)
    text = json_format.MessageToJson(_codec.encode(value))
    assert same(value, _codec.decode(json_format.Parse(text, struct_pb2.Value())))


@settings(CODEC, max_examples=60)
@given(values)
def test_the_size_limit_is_exact(value):
    size = _codec.encode(value).ByteSize()
    assert same(value, _codec.decode(_codec.encode(value, max_bytes=size)))
    with pytest.raises(SerializationError) as info:
        _codec.encode(value, max_bytes=size - 1)
    assert info.value.limit == "size"


@settings(CODEC, max_examples=100)
@given(ints)
def test_ints_keep_every_digit(n):
    back = round_trip(n)
    assert type(back) is int and back == n


@settings(CODEC, max_examples=100)
@given(floats)
def test_floats_stay_floats(x):
    back = round_trip(x)
    assert type(back) is float and same(x, back)


# ---------------------------------------------------------------- the documented examples

def documented_examples() -> list[tuple[str, str]]:
    """(Python expression, JSON) of each row of the examples table in docs/values.md."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- examples:"))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        match = re.fullmatch(r"\| `(.+)` \| `(.+)` \|", line)
        assert match, f"malformed example row in docs/values.md: {line}"
        rows.append((match[1], match[2]))
    return rows


EXAMPLE_NAMES = {
    "datetime": dt.datetime, "date": dt.date, "time": dt.time, "timedelta": dt.timedelta,
    "timezone": dt.timezone, "Decimal": decimal.Decimal, "UUID": uuid.UUID, "nan": math.nan,
    "inf": math.inf,
}


def test_the_doc_has_an_example_of_every_built_in_type_name():
    shown = {json.loads(text)["$type"] for _, text in documented_examples() if text.startswith('{"$type"')}
    assert shown == set(_codec.BUILTIN_NAMES)


@pytest.mark.parametrize(("expression", "json_text"), documented_examples(),
                         ids=[row[0] for row in documented_examples()])
def test_documented_example_encodes_and_decodes_as_written(expression, json_text):
    value = eval(expression, dict(EXAMPLE_NAMES))  # noqa: S307 - our own doc's examples
    assert json_format.MessageToDict(_codec.encode(value)) == json.loads(json_text)
    assert same(value, _codec.decode(json_format.Parse(json_text, struct_pb2.Value())))


# ------------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("n", [2**53, -(2**53), 0, -1, 123456789])
def test_ints_up_to_2_53_are_plain_numbers(n):
    assert _codec.encode(n).WhichOneof("kind") == "number_value"


@pytest.mark.parametrize("n", [2**53 + 1, -(2**53) - 1, 2**70, -(2**64) - 1, 10**4000])
def test_larger_ints_travel_as_decimal_text(n):
    fields = _codec.encode(n).struct_value.fields
    assert fields["$type"].string_value == "int"
    assert fields["$value"].string_value == str(n)
    assert round_trip(n) == n


def test_bool_is_never_confused_with_int():
    back = round_trip([True, 1, False, 0, {True: 1, 2: False}])
    assert [type(x) for x in back[:4]] == [bool, int, bool, int]
    assert same(back[4], {True: 1, 2: False})
    assert _codec.encode(True).WhichOneof("kind") == "bool_value"


@pytest.mark.parametrize(("x", "text"), [
    (4.0, "4.0"), (-0.0, "-0.0"), (0.0, "0.0"), (1e300, "1e+300"), (2.0**60, "1.152921504606847e+18"),
    (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"),
])
def test_integral_and_non_finite_floats_are_tagged(x, text):
    fields = _codec.encode(x).struct_value.fields
    assert (fields["$type"].string_value, fields["$value"].string_value) == ("float", text)
    assert same(x, round_trip(x))


def test_negative_zero_keeps_its_sign_everywhere():
    back = round_trip([-0.0, complex(-0.0, -0.0), decimal.Decimal("-0"), (-0.0,)])
    assert math.copysign(1, back[0]) == -1
    assert math.copysign(1, back[1].real) == -1 and math.copysign(1, back[1].imag) == -1
    assert back[2].is_signed() and back[2].is_zero()
    assert math.copysign(1, back[3][0]) == -1


def test_nan_round_trips_as_nan_in_every_position():
    back = round_trip({"x": math.nan, "c": complex(math.nan, math.inf), "d": decimal.Decimal("NaN"),
                       "l": [math.nan], 1: math.nan})
    assert math.isnan(back["x"]) and math.isnan(back["l"][0]) and math.isnan(back[1])
    assert cmath.isnan(back["c"]) and math.isinf(back["c"].imag)
    assert back["d"].is_nan() and not back["d"].is_snan()


@pytest.mark.parametrize(("number", "expected"), [
    (4.0, 4), (-0.0, 0), (9007199254740992.0, 2**53), (0.5, 0.5), (2.0**60, 2.0**60), (1e300, 1e300),
    (math.inf, math.inf),
])
def test_plain_numbers_from_other_clients_read_as_int_only_when_integral_and_safe(number, expected):
    back = _codec.decode(struct_pb2.Value(number_value=number))
    assert type(back) is type(expected) and back == expected


def test_tagged_int_and_float_payloads_from_other_clients_are_accepted_when_small():
    assert same(_codec.decode(json_format.Parse('{"$type": "int", "$value": "7"}', struct_pb2.Value())), 7)
    assert same(_codec.decode(json_format.Parse('{"$type": "float", "$value": "0.5"}', struct_pb2.Value())), 0.5)
    assert same(_codec.decode(json_format.Parse('{"$type": "float", "$value": "1E5"}', struct_pb2.Value())), 1e5)


# ---------------------------------------------------------------------- dates and decimals

@pytest.mark.parametrize("value", [
    dt.datetime(2026, 11, 24, 12, 30, 5, 123456),
    dt.datetime(2026, 11, 24, 12, 30, 5, 1, tzinfo=dt.timezone.utc),
    dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(-dt.timedelta(minutes=30))),
    dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, seconds=-30, microseconds=-7))),
    # offsets under a second, which Python 3.11's fromisoformat alone would read as UTC
    dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
    dt.datetime(2000, 1, 1, tzinfo=dt.timezone(-dt.timedelta(microseconds=999999))),
    dt.time(12, tzinfo=dt.timezone(dt.timedelta(microseconds=250000))),
    dt.time(0, 0), dt.time(23, 59, 59, 999999),
    dt.time(8, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.date(2020, 2, 29), dt.date.min, dt.date.max,
    dt.timedelta(0), dt.timedelta(microseconds=-1), dt.timedelta.min, dt.timedelta.max,
])
def test_dates_times_and_durations_round_trip_with_microseconds_and_offsets(value):
    back = round_trip(value)
    assert same(value, back)
    if isinstance(value, (dt.datetime, dt.time)):
        assert (back.tzinfo is None) == (value.tzinfo is None)
        assert back.utcoffset() == value.utcoffset()


def test_naive_and_aware_datetimes_stay_apart():
    naive, aware = dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    back = round_trip([naive, aware])
    assert back[0].tzinfo is None and back[1].tzinfo == dt.timezone.utc


def test_a_named_zone_arrives_as_its_offset_at_that_instant():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database here")
    summer = dt.datetime(2026, 7, 1, 12, tzinfo=paris)
    back = round_trip(summer)
    assert back == summer and back.utcoffset() == dt.timedelta(hours=2)
    assert back.tzinfo == dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize("text", [
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899",
    "1E+3", "1.000", "1000", "-0", "-0.00", "0E-10", "1E-1000000", "-9.9E+999999999",
    "NaN", "-NaN", "sNaN", "-sNaN7", "NaN123", "Infinity", "-Infinity",
])
def test_decimals_keep_every_digit_their_exponent_and_their_kind(text):
    value = decimal.Decimal(text)
    back = round_trip(value)
    assert type(back) is decimal.Decimal and back.as_tuple() == value.as_tuple()
    assert str(back) == str(value)


def test_decimals_ignore_the_receivers_decimal_context():
    with decimal.localcontext(decimal.Context(prec=3, traps=[decimal.Inexact, decimal.Rounded])):
        back = round_trip(decimal.Decimal("1.23456789"))
    assert str(back) == "1.23456789"


def test_uuids_and_bytes_are_exact():
    values = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4(), b"", bytes(range(256)),
              bytearray(b"\x00"), bytearray()]
    assert same(values, round_trip(values))
    assert _codec.encode(uuid.UUID(int=2**128 - 1)).struct_value.fields["$value"].string_value == \
        "ffffffff-ffff-ffff-ffff-ffffffffffff"


# ---------------------------------------------------------------------------------- dicts

@pytest.mark.parametrize("value", [
    {"$type": "bytes", "$value": "AP8="},
    {"$type": "int", "$value": "12"},
    {"$type": 1},
    {"$type": "acme.Unknown", "$value": None, "other": 1},
    {"$value": "alone"},
    {"outer": {"$type": "tuple", "$value": [1, 2]}},
    [{"$type": "set", "$value": []}],
])
def test_dicts_that_look_like_tagged_values_come_back_as_those_dicts(value):
    assert same(value, round_trip(value))


def test_a_look_alike_dict_is_sent_as_pairs_not_as_a_struct_with_type():
    fields = _codec.encode({"$type": "bytes"}).struct_value.fields
    assert fields["$type"].string_value == "dict"


@pytest.mark.parametrize("value", [
    {1: "one", 2: "two"}, {None: 0}, {(1, "a"): [1]}, {frozenset({1}): {2: 3}},
    {dt.date(2000, 1, 1): "y2k"}, {b"k": b"v"}, {1.5: "x", -0.0: "z"}, {True: "t", "s": 1},
    {decimal.Decimal("1.10"): 1}, {uuid.UUID(int=5): None}, {2**70: "big"},
    {"a": 1, 2: "b", "$type": "c"},
])
def test_dict_keys_that_are_not_str_are_carried_faithfully(value):
    assert same(value, round_trip(value))


def test_pairs_keep_the_dicts_order():
    value = {k: k for k in [9, 3, 7, 1, 8, 2, 6, 4, 5, 0]}
    assert list(round_trip(value)) == list(value)


def test_a_dict_whose_first_non_str_key_comes_late_is_still_exact():
    value = {f"k{i}": [i, b"x"] for i in range(50)}
    value[7] = "seven"
    names: set[str] = set()
    message = _codec.encode(value, names=names)
    assert message.struct_value.fields["$type"].string_value == "dict"
    assert same(value, _codec.decode(message))
    assert message.ByteSize() == _codec.encode_into(struct_pb2.Value(), value)


# -------------------------------------------------------------------- exact types only

Color = enum.IntEnum("Color", "RED GREEN")
Point = namedtuple("Point", "x y")


class Text(str):
    pass


class Stamp(dt.datetime):
    pass


@pytest.mark.parametrize(("value", "base"), [
    (Color.RED, "int"), (OrderedDict(a=1), "dict"), (defaultdict(list), "dict"),
    (Point(1, 2), "tuple"), (Text("x"), "str"), (Stamp(2026, 1, 1), "datetime"),
])
def test_subclasses_of_built_in_types_are_refused_saying_what_they_subclass(value, base):
    with pytest.raises(SerializationError) as info:
        _codec.encode({"k": [value]})
    message = str(info.value)
    assert type(value).__qualname__ in message and f"subclasses {base}" in message
    assert "['k'][0]" in message
    assert info.value.limit is None


def test_an_encoder_returning_what_cannot_be_encoded_is_named_with_the_value_it_was_given():
    """It named the payload's type at the payload's place (['cents'] under [1]['a']), as if the
    caller had passed that."""
    class Money:
        pass
    registry = _codec.TypeRegistry()
    registry.register(Money, "test.Money", lambda m: {"cents": object()}, lambda payload: Money())
    with pytest.raises(SerializationError) as info:
        _codec.encode([1, {"a": Money()}], registry)
    message = str(info.value)
    assert message.startswith("cannot encode a value of type '") and "<locals>.Money'" in message
    assert message.split(") ", 1)[1].startswith(
        "at [1]['a']: its encoder for 'test.Money' returned a value of type 'dict' that cannot be encoded: "
        "cannot encode "
        "a value of type 'object' (builtins.object) at ['cents']: no codec or resolver"), message
    assert info.value.limit is None


def test_a_registered_subclass_travels_by_its_name():
    registry = _codec.TypeRegistry()
    registry.register(Color, "test.Color", lambda c: c.name, lambda name: Color[name])
    registry.register(OrderedDict, "test.OrderedDict", lambda d: list(d.items()),
                      lambda pairs: OrderedDict(pairs))
    value = [Color.GREEN, OrderedDict([("b", Color.RED), ("a", 2)])]
    names: set[str] = set()
    back = _codec.decode(_codec.encode(value, registry, names=names), registry)
    assert back[0] is Color.GREEN
    assert type(back[1]) is OrderedDict and list(back[1].items()) == [("b", Color.RED), ("a", 2)]
    assert {"test.Color", "test.OrderedDict", "tuple"} <= names


def test_names_collects_every_tagged_type_used():
    names: set[str] = set()
    _codec.encode({"a": [b"x", (1,)], 2: {dt.date(2000, 1, 1)}, "f": 4.0, "n": 2**60}, names=names)
    assert names == {"dict", "bytes", "tuple", "set", "date", "float", "int"}
    plain: set[str] = set()
    _codec.encode({"a": [1, 0.5, None, True, "s", {}]}, names=plain)
    assert plain == set()


# ------------------------------------------------------------------- values that raise when read

class _RaisingOffset(dt.tzinfo):
    def utcoffset(self, when):
        raise RuntimeError("tz boom")


def test_what_reading_a_value_raises_is_a_serialization_error_naming_where():
    # a tzinfo whose utcoffset raises, a set changed while it is encoded (as another thread
    # may): they were a bare RuntimeError naming neither the value nor its place
    when = dt.datetime(2020, 1, 1, tzinfo=_RaisingOffset())
    with pytest.raises(SerializationError) as info:
        _codec.encode([0, {"when": when}])
    assert str(info.value) == "cannot read a value at [1]['when']: reading it raised RuntimeError: tz boom"
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.limit is None
    with pytest.raises(SerializationError, match=r"^cannot read a value: reading it raised RuntimeError: tz boom$"):
        _codec.encode(when)

    class Grows:
        """Its encoder adds to the set it sits in."""
    growing = {Grows(), 1, 2}
    registry = _codec.TypeRegistry()
    registry.register(Grows, "test.Grows", lambda value: growing.add(object()) or 0, lambda payload: Grows())
    with pytest.raises(SerializationError) as info:
        _codec.encode({"a": [growing]}, registry)
    assert str(info.value) == ("cannot read a value at ['a'][0]: "
                               "reading it raised RuntimeError: Set changed size during iteration")


def test_the_sandbox_lets_what_reading_a_result_raises_through_as_it_is():
    # a result whose own code raised is the guest's error, with its traceback (guest.py)
    target = struct_pb2.Value()
    when = dt.datetime(2020, 1, 1, tzinfo=_RaisingOffset())
    for value in (when, [0, {"when": when}]):
        with pytest.raises(RuntimeError, match="^tz boom$"):
            _codec.encode_into(target, value, wrap_read_errors=False)
        assert target == struct_pb2.Value()
