"""The client's public surface is exactly what DESIGN.md promises, and nothing of the daemon."""
import copy
import pickle
import subprocess
import sys

import isorun
from isorun import errors


def test_public_names_are_exactly_these():
    assert sorted(isorun.__all__) == sorted([
        "AsyncCodeRunner", "CodeRunner", "DaemonUnavailable", "FunctionNotFound", "GuestError",
        "IsorunError", "ModuleNotFound", "ResourceLimitError", "RuntimeTimeoutError",
        "SerializationError", "TypeRegistry", "default_socket", "errors", "register_type"])
    for name in isorun.__all__:
        assert hasattr(isorun, name)


def test_error_hierarchy_matches_the_design():
    for cls in (errors.ModuleNotFound, errors.FunctionNotFound, errors.GuestError,
                errors.RuntimeTimeoutError, errors.ResourceLimitError, errors.SerializationError,
                errors.DaemonUnavailable, errors.InvalidRequest, errors.AccessDenied, errors.SandboxError):
        assert issubclass(cls, errors.IsorunError)
    assert issubclass(errors.FunctionNotFound, TypeError)
    assert issubclass(errors.SerializationError, TypeError)
    assert issubclass(errors.RuntimeTimeoutError, TimeoutError)
    assert issubclass(errors.DaemonUnavailable, ConnectionError)
    e = errors.ModuleNotFound("numpy")
    assert str(e) == "Cannot find module 'numpy'" and e.module == "numpy"
    g = errors.GuestError("ValueError", "Boom!", "tb")
    assert (g.type_name, g.message, g.traceback) == ("ValueError", "Boom!", "tb")
    assert errors.ResourceLimitError("too much", "memory").limit == "memory"


def test_every_error_survives_pickle_and_copy_with_its_message_and_fields():
    # an error raised in a process pool's worker reaches the parent pickled: GuestError and
    # ResourceLimitError could not be rebuilt (the pool broke), ModuleNotFound's message doubled
    limited = errors.SerializationError("too large")
    limited.limit = "size"
    cases = [errors.GuestError("ValueError", "Boom!", "Traceback …"), errors.ModuleNotFound("os"),
             errors.ResourceLimitError("over its memory", "memory"), limited,
             errors.FunctionNotFound("no f"), errors.RuntimeTimeoutError("too slow"),
             errors.DaemonUnavailable("no daemon"), errors.InvalidRequest("bad"),
             errors.AccessDenied("not you"), errors.SandboxError("died")]
    for error in cases:
        error.add_note("a note")
        for rebuilt in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
            assert type(rebuilt) is type(error)
            assert (str(rebuilt), rebuilt.args, vars(rebuilt)) == (str(error), error.args, vars(error))
    assert pickle.loads(pickle.dumps(cases[1])).module == "os"


def test_the_client_imports_without_the_daemon():
    code = ("import sys, isorun, isorun._cli\n"
            "assert not [m for m in sys.modules if m.startswith(('isorund', 'pyseccomp', 'prometheus'))]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_socket_discovery_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("ISORUN_SOCKET", "/somewhere/isorund.sock")
    assert isorun.default_socket() == "/somewhere/isorund.sock"
    monkeypatch.delenv("ISORUN_SOCKET")
    assert isorun.default_socket().endswith("isorund.sock")
    runner = isorun.CodeRunner(root="/x", file="a.py", socket="/explicit.sock")
    assert runner.socket == "/explicit.sock"
    runner.close()
