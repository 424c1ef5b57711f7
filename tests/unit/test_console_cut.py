"""The lines of a console batch the daemon relays when the batch goes over what is left of the
call's console cap (isorund.sandbox_call._batch_within): those that fit, in order, found from
the batch's bytes, whatever a guest wrote into them."""
from isorun._proto import runner_pb2 as pb
from isorund import sandbox_call
from isorun._proto import sandbox_pb2 as sb

HEADER = 4


def _batch(*texts) -> sb.SandboxEvent:
    lines = pb.ConsoleBatch(lines=[pb.ConsoleLine(stream=pb.ConsoleLine.STDOUT, text=t) for t in texts])
    return sb.SandboxEvent(console_batch=lines.SerializeToString())


def test_the_lines_that_fit_are_kept_in_order_each_costing_what_it_would_alone():
    event = _batch("a\n", "bb\n", "ccc\n")
    alone = [HEADER + 2 + pb.ConsoleLine(stream=1, text=t).ByteSize() for t in ("a\n", "bb\n")]
    assert [line.text for line in sandbox_call._batch_within(event, sum(alone)).lines] == ["a\n", "bb\n"]
    assert [line.text for line in sandbox_call._batch_within(event, sum(alone) - 1).lines] == ["a\n"]
    assert list(sandbox_call._batch_within(event, 0).lines) == []


def test_an_empty_line_costs_a_frame_header_and_an_events_framing():
    event = sb.SandboxEvent(console_batch=b"\x0a\x00" * 1000)
    assert len(sandbox_call._batch_within(event, 600).lines) == 100


def test_a_batch_cut_short_or_holding_another_field_ends_the_lines_there():
    whole = _batch("a\n").console_batch
    for broken in (whole + b"\x0a\xff", whole + b"\x0a\x05ab", whole + b"\x12\x00" + whole, whole + b"\x0a\x80\x80"):
        lines = sandbox_call._batch_within(sb.SandboxEvent(console_batch=broken), 1 << 20).lines
        assert [line.text for line in lines] == ["a\n"]


def test_a_single_line_fits_or_does_not():
    event = sb.SandboxEvent(console=pb.ConsoleLine(stream=1, text="hello\n"))
    size = HEADER + event.ByteSize()
    assert [line.text for line in sandbox_call._batch_within(event, size).lines] == ["hello\n"]
    assert list(sandbox_call._batch_within(event, size - 1).lines) == []
