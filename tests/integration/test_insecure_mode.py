"""--insecure-no-isolation (README "Security", docs/operations.md): development only. The daemon
starts without building sandboxes, says so loudly in its log, reports it in GetCapabilities, and
still runs calls."""
import json

from isorun import CodeRunner
from isorun._proto import runner_pb2 as pb


def test_insecure_mode_warns_reports_no_isolation_and_still_runs_calls(start_daemon, make_root):
    d = start_daemon(args=["--insecure-no-isolation"])
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    # the first thing it says, before it is ready
    assert lines[0]["event"] == "insecure" and "WITHOUT kernel isolation" in lines[0]["warning"], lines
    (ready,) = [line for line in lines if line["event"] == "ready"]
    assert ready["isolation"] == "none (insecure)", ready
    root = make_root({"index.py": "def add(a, b):\n    return a + b\n"})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as runner:
        assert runner.capabilities().isolation == pb.Capabilities.NONE
        assert runner.run("add", args=[2, 3], timeout=20) == 5
    (call,) = d.calls("add")
    assert call["outcome"] == "ok" and call["warning"] == "insecure: no kernel isolation", call
