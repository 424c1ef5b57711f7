"""What the sandbox's runtime sends of texts the guest made: console lines over the cap and
failures with huge or unencodable texts (isorund.sandbox.console and .failure)."""
import socket
import sys

import pytest

from isorun._proto import runner_pb2 as pb
from isorund.sandbox import channel
from isorund.sandbox.console import Console, capped_line
from isorund.sandbox.failure import TRACEBACK_FRAMES, _cut_in_middle, _failure, describe, guest_report, within_bounds
from isorund.sandbox.limits import CpuLimitExceeded

CAP = 1 << 20


def test_a_line_within_the_cap_is_sent_as_it_is():
    for line in ("", "hi\n", "x" * CAP, "\u20ac" * (CAP // 3)):
        assert capped_line(line, CAP) is line


def test_a_line_over_the_cap_is_cut_to_between_one_and_four_bytes_over_it():
    # ASCII, 2-, 3- and 4-byte characters, so that every cut position inside a character occurs
    for char in ("y", "\u00e9", "\u20ac", "\U0001f600"):
        for extra in range(8):
            line = char * ((CAP + extra) // len(char.encode()) + 1)
            cut = capped_line(line, CAP)
            size = len(cut.encode())
            assert CAP < size <= CAP + 4, (char, extra, size)
            assert line.startswith(cut)


def test_lone_surrogates_in_a_console_line_are_escaped_before_it_is_cut():
    # no protobuf string may hold one: the send that met it (the outcome's, when the line was
    # still pending) raised, and the sandbox ended without an outcome
    a, b = socket.socketpair()
    with a, b:
        console = Console(a)
        console.add(pb.ConsoleLine.STDERR, "bad \ud800 name\n")
        console.cap = 64
        console.add(pb.ConsoleLine.STDOUT, "\udcff" * 100)
        console.flush()
        first = pb.RunEvent.FromString(channel.receive(b, 1 << 20))
        assert (first.console.stream, first.console.text) == (pb.ConsoleLine.STDERR, "bad \\ud800 name\n")
        second = pb.RunEvent.FromString(channel.receive(b, 1 << 20))
        assert second.console.text == ("\\udcff" * 100)[:68]  # escaped first, then cut just over the cap


def test_a_text_is_cut_in_the_middle_only_when_longer_than_its_bound():
    assert _cut_in_middle("abc", 3) == "abc"
    cut = _cut_in_middle("a" * 50 + "z" * 50, 20)
    assert cut == "a" * 10 + "\n[… 80 characters cut …]\n" + "z" * 10


def test_a_failures_texts_get_a_sixteenth_of_the_result_cap_each_and_at_least_1024_characters():
    def failure():
        return pb.Failure(kind=pb.Failure.GUEST_EXCEPTION, type_name="E" * 5000, message="m" * 10**6,
                          traceback="t" * 10**6)
    small = within_bounds(failure(), result_bytes=4096)
    assert len(small.message) < 1100 and small.message.startswith("m" * 512)
    assert len(small.traceback) < 1100 and len(small.type_name) < 1100
    default = within_bounds(failure(), result_bytes=16 << 20)
    assert 256 << 10 <= len(default.message) < (256 << 10) + 100
    ample = within_bounds(pb.Failure(message="m" * 1000, traceback="t" * 1000), result_bytes=16 << 20)
    assert ample.message == "m" * 1000 and ample.traceback == "t" * 1000


def test_lone_surrogates_in_a_failures_texts_are_escaped_as_stderr_writes_them():
    f = _failure(kind=pb.Failure.GUEST_EXCEPTION, type_name="ValueError", message="bad \ud800 text",
                 traceback="ValueError: bad \ud800 text\n")
    assert f.message == "bad \\ud800 text"
    assert f.traceback == "ValueError: bad \\ud800 text\n"
    assert f.SerializeToString()


def _raised_at_depth(depth: int) -> BaseException:
    def down(n):
        if n == 0:
            raise ValueError("bottom")
        return down(n - 1)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000)
    try:
        down(depth)
    except ValueError as e:
        return e
    finally:
        sys.setrecursionlimit(limit)


def test_a_traceback_cut_to_its_innermost_frames_says_how_many_guest_frames_came_before():
    here = {__file__}
    _, short = guest_report(_raised_at_depth(10), here)
    assert "not shown" not in short and short.count("in down") == 4  # (3, then "repeated 7 more times")
    _, deep = guest_report(_raised_at_depth(TRACEBACK_FRAMES + 500), here)
    # (the frame that caught it counts: it is in a "guest" file here, as every down() is)
    assert deep.startswith("Traceback (most recent call last):\n  [… 502 earlier frames not shown …]\n")
    assert deep.endswith("ValueError: bottom\n")


class _Counted(Exception):
    calls = 0

    def __str__(self):
        _Counted.calls += 1
        return f"said {_Counted.calls} time(s)"


def _raised(e: BaseException) -> BaseException:
    try:
        raise e
    except BaseException as caught:  # noqa: B036 - the point is what was raised
        return caught


def test_the_guests_str_runs_once_for_the_message_and_the_traceback():
    failure = describe(_raised(_Counted()), {__file__})
    assert _Counted.calls == 1
    assert failure.message == "said 1 time(s)"
    assert failure.traceback.endswith("_Counted: said 1 time(s)\n")


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


def test_a_str_that_fails_reads_as_python_prints_it_in_message_and_traceback():
    failure = describe(_raised(_Unprintable()), {__file__})
    assert failure.type_name == "_Unprintable"
    assert failure.message == "<exception str() failed>"
    assert failure.traceback.endswith("_Unprintable: <exception str() failed>\n")


class _OutOfCpu(Exception):
    def __str__(self):
        raise CpuLimitExceeded()  # as SIGXCPU's handler would, inside the guest's __str__


def test_the_cpu_limit_met_inside_a_str_is_the_outcome_though_traceback_swallows_it(monkeypatch):
    monkeypatch.setattr(CpuLimitExceeded, "raised", False)
    with pytest.raises(CpuLimitExceeded):
        guest_report(_raised(_OutOfCpu()), {__file__})


def test_a_huge_module_name_is_cut_like_the_other_texts():
    """__import__("m" * 2_000_000) was a result-limit failure (an outcome of 2 MB), not the
    ModuleNotFound it is."""
    failure = within_bounds(pb.Failure(kind=pb.Failure.MODULE_NOT_FOUND, module="m" * 2_000_000), 1 << 20)
    assert failure.kind == pb.Failure.MODULE_NOT_FOUND and len(failure.module) < 1100
    assert failure.module.startswith("m" * 512) and "characters cut" in failure.module
