"""The daemon reads a sandbox's events and answers Run with wire twins of the public messages
(sandbox.proto): what it relays must be byte for byte what the client's schema reads."""
import pytest
from google.protobuf import descriptor

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

# The twins' fields that hold bytes where the public message holds a submessage.
KEPT_AS_BYTES = {("SandboxEvent", "console_batch"), ("RelayedOutcome", "value")}
TWINS = [(sb.SandboxEvent, pb.RunEvent), (sb.RelayedOutcome, pb.Outcome), (sb.RelayedRunResponse, pb.RunResponse)]
TWIN_NAMES = {twin.DESCRIPTOR.full_name: public.DESCRIPTOR.full_name for twin, public in TWINS}


@pytest.mark.parametrize("twin, public", TWINS, ids=lambda m: m.DESCRIPTOR.name)
def test_a_twin_has_the_public_messages_fields_and_wire_types(twin, public):
    theirs = {f.number: f for f in public.DESCRIPTOR.fields}
    ours = {f.number: f for f in twin.DESCRIPTOR.fields}
    assert sorted(ours) == sorted(theirs)
    for number, field in ours.items():
        other = theirs[number]
        assert (field.name, field.is_repeated) == (other.name, other.is_repeated)
        assert (field.containing_oneof is None) == (other.containing_oneof is None), field.name
        if (twin.DESCRIPTOR.name, field.name) in KEPT_AS_BYTES:
            assert field.type == descriptor.FieldDescriptor.TYPE_BYTES
            assert other.type == descriptor.FieldDescriptor.TYPE_MESSAGE  # both length-delimited
        elif field.message_type is not None:
            name = field.message_type.full_name
            assert TWIN_NAMES.get(name, name) == other.message_type.full_name, field.name
        else:
            assert field.type == other.type, field.name


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
