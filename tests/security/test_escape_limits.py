"""Resource attacks: each ends at its limit, as a clear error or an OSError in the guest, and
takes nothing from the host or the next call (checked after every test by ``daemon_survives``)."""
import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

from isorun import AsyncCodeRunner, CodeRunner, _codec, errors
from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc
from processes import peak_rss_growth

MiB = 1 << 20
ATTACKS = Path(__file__).resolve().parent / "attacks"


def test_fork_bomb_stops_at_max_processes(attack, secure_daemon):
    result = attack("fork_bomb", timeout=20)
    assert result["stopped_by"] == "EAGAIN"
    assert 0 < result["made"] < secure_daemon.limits["max_processes"]


def test_a_guest_is_the_oom_killers_first_choice_and_cannot_change_that(attack, secure_daemon):
    """Its score may not go below the host's processes' (0). (Below its own it may: a floor
    needs CAP_SYS_RESOURCE in the daemon, which keeps only what sandbox set-up needs.)"""
    assert attack("memory_bomb", "oom_score", timeout=20) == {
        "own": 1000, "child": 1000, "to -1": "EACCES", "to 0": "lowered to 0"}
    with open(f"/proc/{secure_daemon.proc.pid}/oom_score_adj") as f:
        assert int(f.read()) < 1000  # the daemon itself is not first


def test_memory_bomb_is_a_memory_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("memory_bomb", timeout=20)
    assert raised.value.limit == "memory"


def test_cpu_spin_ends_at_cpu_seconds(attack, secure_daemon):
    # A limit error, not RuntimeTimeoutError: the CPU limit (2 s) ended it, not the 20 s timeout.
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("cpu_spin", timeout=20)
    assert raised.value.limit == "cpu"
    # ... at 2 s, not 3: the pool's milliseconds once rounded the limit up a whole second
    spent = secure_daemon.calls("attack")[-1]["cpu_ms"] / 1000
    assert secure_daemon.limits["cpu_seconds"] - 0.5 < spent < secure_daemon.limits["cpu_seconds"] + 0.3


@pytest.mark.parametrize("func", ["attack_exiting_on_sigxcpu", "attack_in_its_exceptions_str"])
def test_cpu_spent_where_no_outcome_can_follow_is_still_a_cpu_limit(attack, func):
    """The soft limit's signal, landing in a handler that leaves the process or in the runtime
    reporting the guest's exception, ended the call as 'the sandbox ended without reporting an
    outcome'."""
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("cpu_spin", func, timeout=20)
    assert raised.value.limit == "cpu"


def test_cpu_spin_ignoring_sigxcpu_is_killed_by_the_kernel(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("cpu_spin", "attack_ignoring_sigxcpu", timeout=20)
    assert raised.value.limit == "cpu"


def test_filling_tmp_ends_with_enospc(attack, secure_daemon):
    result = attack("fill_disk", "fill", args=[256 << 10], timeout=20)
    assert result["stopped_by"] == "ENOSPC"
    assert result["written"] <= secure_daemon.limits["tmp_bytes"]


def test_a_file_over_max_file_bytes_ends_with_efbig(attack, secure_daemon):
    result = attack("fill_disk", "huge_file", args=[8 * MiB], timeout=20)
    assert result == {"written": secure_daemon.limits["max_file_bytes"], "stopped_by": "EFBIG"}


def test_empty_files_in_tmp_run_out_of_inodes(attack, secure_daemon):
    result = attack("fill_disk", "inodes", timeout=20)
    assert result["stopped_by"] == "ENOSPC"
    assert result["made"] <= secure_daemon.limits["tmp_bytes"] // 4096


def test_output_flood_is_an_output_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("floods", "output", timeout=20)
    assert raised.value.limit == "output"


def test_huge_result_is_a_result_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("floods", "result", args=[20 * MiB], timeout=20)
    assert raised.value.limit == "result"


@pytest.mark.parametrize("func", ["huge_frame", "garbage_frame"])
def test_garbage_on_the_channel_ends_only_that_call(attack, func):
    started = time.monotonic()
    with pytest.raises(errors.IsorunError):
        attack("channel_garbage", func, timeout=20)
    assert time.monotonic() - started < 8  # the daemon stopped reading at once; the guest slept 10 s


def test_a_call_that_asks_for_a_smaller_tmp_gets_it(secure_daemon, tmp_path):
    """The pool's /tmp has the daemon's size; a call asking for less (RunRequest.limits, raw
    gRPC) gets its /tmp resized before its code runs."""
    root = tmp_path / "guest"
    root.mkdir()
    root.chmod(0o755)
    for name in ("escape.py", "fill_disk.py"):
        shutil.copy(ATTACKS / name, root / name)
    smaller = 1 * MiB
    assert smaller < secure_daemon.limits["tmp_bytes"]
    request = pb.RunRequest(root=str(root), file="fill_disk.py", func_name="fill", args=[_codec.encode(64 << 10)],
                            limits=pb.Limits(tmp_bytes=smaller), timeout_seconds=20)
    with grpc.insecure_channel("unix:" + secure_daemon.socket) as channel:
        outcome = runner_pb2_grpc.RunnerStub(channel).Run(request, timeout=60).outcome
    assert outcome.WhichOneof("result") == "value", outcome
    result = _codec.decode(outcome.value)
    assert result["stopped_by"] == "ENOSPC"
    assert 0 < result["written"] <= smaller


def test_forged_console_batches_count_against_the_output_cap_and_are_not_held(attack, secure_daemon):
    """The sandbox's runtime sends lines in batches; batches a guest writes to its channel
    itself get no line past the output cap, and the daemon does not hold them."""
    received = []
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("forged_events", "console_batches", args=[64], timeout=20,  # 16 MiB of lines
               on_console=lambda stream, text: received.append(len(text)))
    assert raised.value.limit == "output"
    assert sum(received) <= MiB, sum(received)
    rss = psutil.Process(secure_daemon.pid).memory_info().rss
    assert rss < 400 * MiB, rss


def test_batches_of_empty_lines_are_an_output_limit(attack):
    """A line in a batch costs what it would cost as a frame of its own, header included:
    4,096 empty lines to a batch are not nearly free."""
    received = []
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("forged_events", "empty_line_batches_forever", timeout=20,
               on_console=lambda stream, text: received.append(text))
    assert raised.value.limit == "output"
    # 1 MiB at 4 (header) + 2 (the line in its batch) bytes a line at most
    assert len(received) <= MiB // 6, len(received)


def test_one_frame_of_millions_of_empty_lines_ends_the_call_at_once(attack, secure_daemon):
    """A batch is counted before the daemon parses it: 8,000,000 empty lines in one 16 MB
    frame are an output limit at once. (Each line a Python object first: the daemon stalled
    for minutes and took 625 MiB more; the whole frame parsed first: it took ~385 MiB.)"""
    grown = peak_rss_growth(secure_daemon.pid)
    started = time.monotonic()
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("forged_events", "one_batch_of_empty_lines", args=[8_000_000], timeout=30)
    assert raised.value.limit == "output"
    assert time.monotonic() - started < 15
    assert grown() < 100 * MiB, grown()


def test_a_result_of_millions_of_tiny_items_is_relayed_without_being_parsed(attack, secure_daemon):
    """The daemon relays a result as its bytes: 4,000,000 nulls (16 MB) cost it about their
    size, not the ~385 MiB a parse into messages took. The client parses them."""
    grown = peak_rss_growth(secure_daemon.pid)
    result = attack("forged_events", "result_of_nulls", args=[4_000_000], timeout=30)
    assert len(result) == 4_000_000 and set(result) == {None}
    assert grown() < 100 * MiB, grown()


@pytest.mark.parametrize("forged", [("result_not_a_value", "utf8"), ("result_not_a_value", "wire_type"),
                                    ("deep_result", 120), ("deep_result", 5000)], ids=str)
@pytest.mark.parametrize("rpc", ["Run", "RunStream"])
def test_a_result_that_is_not_a_value_is_a_sandbox_error_of_that_call(attack, rpc, forged):
    """The daemon relays a result without parsing it; the client's parse is where a forged
    one fails (bytes that are not a Value, or nested past the parser's limit), as that call's
    error (not grpc's INTERNAL)."""
    func, arg = forged
    streamed = {"on_console": lambda stream, text: None} if rpc == "RunStream" else {}
    with pytest.raises(errors.SandboxError, match="not a valid google.protobuf.Value"):
        attack("forged_events", func, args=[arg], timeout=20, **streamed)


@pytest.mark.parametrize("rpc", ["Run", "RunStream"])
def test_the_async_runner_too_makes_a_result_that_is_not_a_value_a_sandbox_error(secure_daemon, run_attack, rpc):
    with pytest.raises(errors.SandboxError):  # the guest folder, made by a first call
        run_attack("forged_events", "result_not_a_value", args=["wire_type"], timeout=20)
    streamed = {"on_console": lambda stream, text: None} if rpc == "RunStream" else {}

    async def call():
        async with AsyncCodeRunner(root=run_attack.root, file="forged_events.py", socket=secure_daemon.socket,
                                   **streamed) as runner:
            return await runner.run("result_not_a_value", args=["wire_type"], timeout=20)
    with pytest.raises(errors.SandboxError, match="not a valid google.protobuf.Value"):
        asyncio.run(call())


@pytest.mark.parametrize("which", ["kind", "limit", "nan", "-1"])
def test_an_outcome_no_runtime_makes_ends_the_call_and_is_logged_as_one_json_line(attack, secure_daemon, which):
    """An unknown kind made the call's log line raise: the call was missing from the log and
    the metrics. A limit name of 8 MB went into the log whole, and a NaN CPU time made the
    line invalid JSON (seen)."""
    before = len(secure_daemon.calls("outcome_never_made"))
    with pytest.raises(errors.SandboxError, match="an outcome its runtime never makes"):
        attack("forged_events", "outcome_never_made", args=[which], timeout=20)
    lines = secure_daemon.calls("outcome_never_made")
    assert len(lines) == before + 1 and lines[-1]["outcome"] == "sandbox" and "limit" not in lines[-1]

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")
    for line in secure_daemon.log().splitlines():
        if line.startswith("{"):
            json.loads(line, parse_constant=strict)


def test_a_forged_invalid_request_event_after_running_ends_the_call_as_the_sandboxs_fault(attack):
    """Only the runtime's first step may say the request's values do not parse; a guest that
    says so later cannot make its call look like the client's error."""
    with pytest.raises(errors.SandboxError, match="a 'invalid_request' event"):
        attack("forged_events", "invalid_request", timeout=20)


def test_a_forged_invalid_request_before_running_refuses_only_its_own_call_and_is_cut_short(attack, secure_daemon):
    """A guest can end its own call INVALID_ARGUMENT by sending the event while its module is
    imported (documented: as it can end it with any failure); its text is cut to 2,000
    characters for the client and 500 for the daemon's log."""
    files = {"forged_events.py": (ATTACKS / "forged_events.py").read_text()}
    with pytest.raises(errors.InvalidRequest) as refused:
        attack("forged_at_import", files=files, timeout=20)
    assert str(refused.value) == ("forged " * 20_000)[:2000]
    [line] = [line for line in secure_daemon.log().splitlines() if '"forged forged' in line]
    assert '"outcome": "invalid_argument"' in line and len(line) < 1000, line


def test_a_forged_compiled_event_is_never_kept_for_the_next_calls_of_the_file(secure_daemon, tmp_path):
    """The daemon keeps a call's compiled modules only from the first event of a sandbox it
    asked (the runtime writes it before any guest code runs). A guest that writes its own, with
    code for its modules stamped with their sources' real hashes and versions, ends its call;
    the next calls of the file run the source. Forged in the file's first call (whose sandbox
    was asked: the runtime's event came first) and in a later one (whose sandbox was not)."""
    root = tmp_path / "guest"
    root.mkdir()
    root.chmod(0o755)
    for name in ("escape.py", "forged_events.py", "forged_compiled.py"):
        shutil.copy(ATTACKS / name, root / name)
    (root / "helper.py").write_text("X = 'source'\n")
    with CodeRunner(root=str(root), file="forged_compiled.py", socket=secure_daemon.socket) as runner:
        for _ in range(2):
            with pytest.raises(errors.SandboxError, match="a 'compiled' event"):
                runner.run("forge", timeout=20)
            assert runner.run("read", timeout=20) == "source"


def test_a_forged_outcome_over_the_result_cap_is_refused_where_console_events_may_be_larger(
        start_daemon, tmp_path):
    """With a console cap above the result cap the daemon reads events up to the console's
    size; an outcome is still held to the result's."""
    d = start_daemon(config="[limits]\nresult_bytes = 65536\noutput_bytes = 1048576\n")
    root = tmp_path / "guest"
    root.mkdir()
    root.chmod(0o755)
    for name in ("escape.py", "forged_events.py"):
        shutil.copy(ATTACKS / name, root / name)
    with CodeRunner(root=str(root), file="forged_events.py", socket=d.socket) as runner:
        with pytest.raises(errors.ResourceLimitError, match="an outcome of") as raised:
            runner.run("outcome_of", args=[512 << 10], timeout=20)
        assert raised.value.limit == "result"
        with pytest.raises(errors.GuestError, match="mmm"):  # one within the cap is relayed
            runner.run("outcome_of", args=[1000], timeout=20)


def test_a_forged_empty_console_batch_ends_the_call(attack):
    with pytest.raises(errors.SandboxError, match="an empty event"):
        attack("forged_events", "empty_batch", timeout=20)


def test_a_flood_of_running_events_reaches_the_client_once(secure_daemon, tmp_path):
    root = tmp_path / "guest"
    root.mkdir()
    root.chmod(0o755)
    for name in ("escape.py", "forged_events.py"):
        shutil.copy(ATTACKS / name, root / name)
    seen = []
    with CodeRunner(root=str(root), file="forged_events.py", socket=secure_daemon.socket) as runner:
        with pytest.raises(errors.SandboxError, match="a second 'running' event"):
            runner.run("running_flood", args=[10_000], timeout=20, running=lambda: seen.append(1))
    assert len(seen) == 1, len(seen)


def test_endless_empty_console_lines_are_an_output_limit_and_starve_no_one(attack, secure_daemon, tmp_path):
    # Lines with no text used to cost nothing against the cap, and a channel kept full kept
    # the daemon's event loop from running: the call outlived its timeout, and every other
    # call (and health check) waited for it.
    result = {}

    def flood():
        try:
            attack("forged_events", "empty_lines_forever", timeout=5)
        except errors.IsorunError as e:
            result["error"] = e
    flooder = threading.Thread(target=flood)
    started = time.monotonic()
    flooder.start()
    time.sleep(0.5)
    root = tmp_path / "innocent"
    root.mkdir()
    root.chmod(0o755)
    (root / "index.py").write_text("def ping(x):\n    return x + 1\n")
    with CodeRunner(root=str(root), file="index.py", socket=secure_daemon.socket) as runner:
        assert runner.run("ping", args=[1], timeout=20) == 2
    innocent = time.monotonic() - started
    flooder.join(30)
    assert not flooder.is_alive()
    assert isinstance(result["error"], errors.ResourceLimitError) and result["error"].limit == "output"
    assert innocent < 5, innocent


def test_console_lines_padded_with_undeclared_fields_are_counted(attack):
    """Fields the schema does not declare are neither relayed nor free: 8 lines of 1 MiB of
    padding and no text end the call at the 1 MiB console cap, and the client receives none of
    the padding."""
    received = []
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("forged_events", "padded_lines", args=[8, MiB], timeout=20,
               on_console=lambda stream, text: received.append(text))
    assert raised.value.limit == "output"
    assert received == [""] * len(received) and len(received) < 8


def test_an_empty_event_ends_the_call(attack):
    started = time.monotonic()
    with pytest.raises(errors.SandboxError, match="an empty event"):
        attack("forged_events", "empty_event", timeout=20)
    assert time.monotonic() - started < 8  # ended at once; the guest slept 10 s
