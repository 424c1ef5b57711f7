"""The daemon reads requests and a sandbox's events, and answers, with wire twins of the public
messages (sandbox.proto) whose values stay bytes: what it relays must be byte for byte what
the other side's schema reads."""
import pytest
from google.protobuf import descriptor

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

# The twins' fields that hold bytes where the public message holds a submessage.
KEPT_AS_BYTES = {("SandboxEvent", "console_batch"), ("RelayedOutcome", "value"), ("RelayedRunRequest", "args"),
                 ("ContextEntry", "value"), ("RelayedRunRequest", "resolver_options")}
DAEMON_ONLY = {("SandboxEvent", "invalid_request"), ("SandboxEvent", "compiled")}  # read by the daemon, never relayed
TWINS = [(sb.SandboxEvent, pb.RunEvent), (sb.RelayedOutcome, pb.Outcome), (sb.RelayedRunResponse, pb.RunResponse),
         (sb.RelayedRunRequest, pb.RunRequest)]
TWIN_NAMES = {twin.DESCRIPTOR.full_name: public.DESCRIPTOR.full_name for twin, public in TWINS}


def _assert_same_wire(ours: descriptor.Descriptor, theirs: descriptor.Descriptor) -> None:
    mine = {f.number: f for f in ours.fields if (ours.name, f.name) not in DAEMON_ONLY}
    other_fields = {f.number: f for f in theirs.fields}
    assert sorted(mine) == sorted(other_fields), ours.full_name
    for number, field in mine.items():
        other = other_fields[number]
        assert (field.name, field.is_repeated) == (other.name, other.is_repeated), field.full_name
        assert (field.containing_oneof is None) == (other.containing_oneof is None), field.full_name
        if (ours.name, field.name) in KEPT_AS_BYTES:
            assert field.type == descriptor.FieldDescriptor.TYPE_BYTES, field.full_name
            assert other.type == descriptor.FieldDescriptor.TYPE_MESSAGE, field.full_name  # both length-delimited
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            _assert_same_wire(field.message_type, other.message_type)
        elif field.message_type is not None:
            name = field.message_type.full_name
            assert TWIN_NAMES.get(name, name) == other.message_type.full_name, field.full_name
        else:
            assert field.type == other.type, field.full_name


@pytest.mark.parametrize("twin, public", TWINS, ids=lambda m: m.DESCRIPTOR.name)
def test_a_twin_has_the_public_messages_fields_and_wire_types(twin, public):
    _assert_same_wire(twin.DESCRIPTOR, public.DESCRIPTOR)


def test_the_daemon_only_event_has_a_number_the_public_event_leaves_free():
    assert "invalid_request" not in pb.RunEvent.DESCRIPTOR.fields_by_name
    number = sb.SandboxEvent.DESCRIPTOR.fields_by_name["invalid_request"].number
    assert number not in pb.RunEvent.DESCRIPTOR.fields_by_number


def _outcome() -> pb.Outcome:
    return pb.Outcome(value=_codec.encode([1, "hi", {"a": None}, b"\x00"]), call_id="c1",
                      usage=pb.Usage(wall_seconds=0.5, cpu_seconds=0.25, peak_memory_bytes=7))


def test_an_event_read_and_sent_again_through_the_twin_is_unchanged():
    for event in (pb.RunEvent(outcome=_outcome()), pb.RunEvent(running=pb.Running()),
                  pb.RunEvent(console=pb.ConsoleLine(stream=pb.ConsoleLine.STDERR, text="x\n")),
                  pb.RunEvent(outcome=pb.Outcome(failure=pb.Failure(kind=pb.Failure.TIMEOUT, message="late")))):
        wire = event.SerializeToString()
        assert sb.SandboxEvent.FromString(wire).SerializeToString() == wire


def test_a_batch_stays_bytes_that_parse_as_the_batch():
    batch = pb.ConsoleBatch(lines=[pb.ConsoleLine(text="a\n"), pb.ConsoleLine(text="")])
    relayed = sb.SandboxEvent.FromString(pb.RunEvent(console_batch=batch).SerializeToString())
    assert relayed.WhichOneof("event") == "console_batch"
    assert pb.ConsoleBatch.FromString(relayed.console_batch) == batch


def test_the_daemons_answer_reads_as_a_run_response():
    outcome = sb.RelayedOutcome.FromString(_outcome().SerializeToString())
    outcome.usage.queue_seconds = 0.125  # what the daemon adds
    lines = [pb.ConsoleLine(stream=pb.ConsoleLine.STDOUT, text="hello\n")]
    answer = pb.RunResponse.FromString(sb.RelayedRunResponse(outcome=outcome, console=lines).SerializeToString())
    assert answer.console == lines
    assert _codec.decode(answer.outcome.value) == [1, "hi", {"a": None}, b"\x00"]
    assert (answer.outcome.call_id, answer.outcome.usage.queue_seconds) == ("c1", 0.125)


def test_a_request_read_as_the_twin_reaches_the_sandbox_as_it_was_sent():
    request = pb.RunRequest(root="/srv/t", file="a.py", func_name="f", args=[_codec.encode([1, "x"]), _codec.encode(None)],
                            context={"user": _codec.encode({"id": 7})}, external=["json"], resolver="r",
                            timeout_seconds=2.5, limits=pb.Limits(memory_bytes=1 << 26))
    request.resolver_options.update({"k": [1, 2]})
    relayed = sb.RelayedRunRequest.FromString(request.SerializeToString())
    assert (relayed.root, relayed.func_name, list(relayed.external)) == ("/srv/t", "f", ["json"])
    assert sorted(relayed.context) == ["user"]
    assert pb.RunRequest.FromString(relayed.SerializeToString()) == request
