"""Request validation in the daemon: every bad field is refused with a message naming it."""
import os

import pytest

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2
from isorund import plan
from isorund.sandbox import MAX_PLAN_BYTES, filesystem
from isorund.sandbox.compiled import MAX_COMPILED_BYTES, MODULE_FRAMING_BYTES
from isorund.config import Config


@pytest.fixture
def config():
    return Config.load(None, {"socket": "/tmp/unused.sock"})


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "guest"
    folder.mkdir()
    (folder / "index.py").write_text("def f():\n    return 1\n")
    (folder / "rules.guest").write_text("def f():\n    return 1\n")
    return str(folder)


def request(root, **fields):
    return pb.RunRequest(**{"root": root, "file": "index.py", "func_name": "f", **fields})


def refused(config, req, match):
    with pytest.raises(plan.RequestError, match=match):
        plan.build(req, config)


def test_a_good_request_becomes_a_plan(config, root):
    p = plan.build(request(root, external=["numpy"], timeout_seconds=2), config)
    assert p.root == os.path.realpath(root) and p.file == "index.py"
    assert "numpy" in p.allowed and "json" in p.allowed and "os" not in p.allowed
    assert p.timeout_seconds == 2 and p.limits.cpu_seconds == 3  # a grace second past the timeout
    assert p.limits.memory_bytes == config.limits.memory_bytes
    assert len(p.call_id) == 16


def test_each_call_gets_its_own_id(config, root):
    assert plan.build(request(root), config).call_id != plan.build(request(root), config).call_id


@pytest.mark.parametrize("file, match", [
    ("", "file must be a path"), ("/etc/passwd", "absolute path"), ("../x.py", "outside root"),
    ("missing.py", "does not exist"), ("rules.guest", "source extension"),
])
def test_bad_files_are_refused(config, root, file, match):
    refused(config, request(root, file=file), match)


@pytest.mark.parametrize("file, match", [
    (".", "is a folder, not a source file"), ("sub", "is a folder"), ("sub/..", "is a folder"),
    ("pipe.py", "is not a regular file"),
])
def test_files_that_are_not_source_files_are_named_so(config, root, file, match):
    os.mkdir(os.path.join(root, "sub"))
    os.mkfifo(os.path.join(root, "pipe.py"))
    refused(config, request(root, file=file), match)


def test_a_file_reached_through_a_link_keeps_the_name_it_was_asked_by(config, root):
    # named after the link's target, it was another module than the one its guest modules import
    os.mkdir(os.path.join(root, "releases"))
    os.rename(os.path.join(root, "index.py"), os.path.join(root, "releases", "v3.py"))
    os.symlink("releases/v3.py", os.path.join(root, "rules.py"))
    os.symlink("sub/../rules.py", os.path.join(root, "again.py"))
    os.mkdir(os.path.join(root, "sub"))
    assert plan.build(request(root, file="rules.py"), config).file == "rules.py"
    assert plan.build(request(root, file="again.py"), config).file == "again.py"


def test_a_link_naming_a_host_path_is_read_by_its_targets_name(config, root):
    # the sandbox sees the folder at /guest, where a host path inside root means nothing
    os.symlink(os.path.join(root, "index.py"), os.path.join(root, "absolute.py"))
    assert plan.build(request(root, file="absolute.py"), config).file == "index.py"


def test_a_symlink_out_of_the_root_is_refused(config, root, tmp_path):
    (tmp_path / "outside.py").write_text("x = 1\n")
    os.symlink(tmp_path / "outside.py", os.path.join(root, "link.py"))
    refused(config, request(root, file="link.py"), "symbolic link")


@pytest.mark.parametrize("bad_root", ["", "relative/path", "/no/such/folder", "/"])
def test_bad_roots_are_refused(config, bad_root):
    refused(config, request(bad_root), "root")


@pytest.mark.parametrize("name", ["", "x" * 300])
def test_bad_function_names_are_refused(config, root, name):
    refused(config, request(root, func_name=name), "func_name")


@pytest.mark.parametrize("name", ["1abc", "a.b", "f()", "my-rule"])
def test_a_function_name_that_is_no_identifier_is_the_modules_to_answer(config, root, name):
    """(a FunctionNotFound when the module has no such attribute: see test_guest_semantics)"""
    assert plan.build(request(root, func_name=name), config).file == "index.py"  # built, not refused


@pytest.mark.parametrize("name", ["__init__", "__dir__", "__setattr__", "__ｉｎｉｔ__"])
def test_a_function_name_python_reserves_is_refused(config, root, name):
    """The function is looked up as an attribute of the module, and every module has these:
    __dir__ answered the module's names, __init__ and __setattr__ ran."""
    refused(config, request(root, func_name=name), "a name Python reserves")


@pytest.mark.parametrize("name", ["_private", "__mangled", "trailing__", "____"])
def test_other_underscored_function_names_are_the_guests_to_define(config, root, name):
    plan.build(request(root, func_name=name), config)


def test_other_extensions_when_asked(config, root):
    assert plan.build(request(root, file="rules.guest", source_extensions=[".guest"]), config).file == "rules.guest"
    refused(config, request(root, source_extensions=["py"]), "source extension")


def test_unknown_plugins_are_refused_naming_the_configured_ones(config, root):
    refused(config, request(root, compiler="nope"), r"unknown compiler 'nope' \(configured: none\)")
    refused(config, request(root, resolver="nope"), "unknown resolver")
    refused(config, request(root, args_resolver="nope"), "unknown args_resolver")


@pytest.mark.parametrize("timeout", [-1, 31, float("inf"), float("nan")])
def test_timeouts_out_of_range_are_refused(config, root, timeout):
    refused(config, request(root, timeout_seconds=timeout), "timeout must be > 0 and <= max_timeout")


def test_zero_timeout_means_the_default(config, root):
    assert plan.build(request(root), config).timeout_seconds == config.default_timeout


def test_limits_may_only_be_lowered(config, root):
    p = plan.build(request(root, limits=pb.Limits(memory_bytes=64 << 20)), config)
    assert p.limits.memory_bytes == 64 << 20
    refused(config, request(root, limits=pb.Limits(memory_bytes=config.limits.memory_bytes + 1)),
            rf"limits.memory_bytes may only lower the daemon's limit \(536870912\), got 536870913$")


@pytest.mark.parametrize("asked", [1, 16 << 20, (48 << 20) - 1])
def test_an_address_space_smaller_than_the_runtime_is_refused(config, root, asked):
    # a sandbox maps ~36 MiB before the guest allocates: 1 byte was accepted, and a call that
    # allocated nothing new succeeded under it
    refused(config, request(root, limits=pb.Limits(memory_bytes=asked)),
            f"limits.memory_bytes must be at least 50331648 .*, got {asked}$")
    assert plan.build(request(root, limits=pb.Limits(memory_bytes=48 << 20)), config).limits.memory_bytes == 48 << 20


@pytest.mark.parametrize("asked", [-1.0, float("nan"), float("inf"), float("-inf")])
def test_a_cpu_limit_that_is_no_number_of_seconds_is_refused(config, root, asked):
    # NaN passes every comparison as false: without the check it would become the guest's
    # RLIMIT_CPU (and inf, past the default, the "only lower" message with inf in it)
    refused(config, request(root, limits=pb.Limits(cpu_seconds=asked)), "limits.cpu_seconds must be >= 0")


def test_a_cpu_limit_below_the_default_is_kept_and_zero_means_the_default(config, root):
    asked = plan.build(request(root, timeout_seconds=2, limits=pb.Limits(cpu_seconds=1.5)), config)
    assert asked.limits.cpu_seconds == 1.5
    default = plan.build(request(root, timeout_seconds=2), config)
    assert default.limits.cpu_seconds == 3  # a grace second past the timeout


@pytest.mark.parametrize("asked", [1, 7])
def test_too_few_open_files_for_the_runtime_are_refused(config, root, asked):
    # Below it the guest's own file could not be opened, and the call would fail as a
    # missing module, which names the wrong cause.
    refused(config, request(root, limits=pb.Limits(max_open_files=asked)), "max_open_files must be at least 8")
    assert plan.build(request(root, limits=pb.Limits(max_open_files=8)), config).limits.max_open_files == 8


@pytest.mark.parametrize("key, match", [
    ("not a name", "not a valid Python name"), ("", "not a valid Python name"),
    ("class", "not a valid Python name"), ("None", "not a valid Python name"),
    # a context entry is a builtin name: these would replace the importer, break class
    # statements, or take a name Python reserves for itself
    ("__import__", "reserves"), ("__build_class__", "reserves"), ("__builtins__", "reserves"),
    ("__name__", "reserves"), ("__tenant__", "reserves"),
    # names the guest's source reads as the ones above (Python normalizes them, NFKC): full-width
    # low lines and letters
    ("_\uff3fimport\uff3f\uff3f", "reserves"), ("\uff49\uff46", "not a valid Python name"),
])
def test_context_names_must_be_names_a_guest_can_use(config, root, key, match):
    req = request(root)
    req.context[key].string_value = "x"
    refused(config, req, f"context key {key!r} .*{match}")


@pytest.mark.parametrize("key", ["_private", "__private", "tenant__", "___", "print", "match"])
def test_context_names_python_does_not_reserve_are_kept(config, root, key):
    # "match" is only a soft keyword; "print" replaces a builtin, as the caller asked
    req = request(root)
    req.context[key].string_value = "x"
    assert plan.build(req, config).file == "index.py"


def test_context_keys_that_are_one_name_in_python_source_are_refused(config, root):
    # "ℌ" and "H" are both H in a guest's source: one entry would silently stand for both
    req = request(root)
    req.context["\u210c"].string_value = "fraktur"
    req.context["H"].string_value = "plain"
    refused(config, req, "context keys .* are one name, 'H', in Python source")


BAD_FOLDERS = [
    ("relative", "absolute folder"), ("/proc/self", "may not be"), ("/", "may not be"), ("/sys/class", "may not be"),
    ("/tmp", "may not be"), ("/no/such/dir", "not a folder"),
    # sockets of host services live there; a read-only bind does not stop connect()
    ("/run", "runtime folder /run"), ("/var/run", "runtime folder /run"),
]


@pytest.mark.parametrize("path, match", BAD_FOLDERS)
def test_bad_whitelisted_paths_are_refused(config, root, path, match):
    refused(config, request(root, whitelisted_paths=[path]), match)


def test_a_root_in_the_hosts_runtime_folder_is_accepted(config):
    # the daemon's self-test call has its folder in the state folder, /run/isorund under
    # systemd: refused, the unit's daemon never started (seen in CI)
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(dir="/run", prefix="isorun-test-")
    try:
        with open(os.path.join(folder, "index.py"), "w") as f:
            f.write("def f():\n    return 1\n")
        assert plan.build(request(folder), config).root == folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("path, match", [(p, m) for p, m in BAD_FOLDERS if "runtime" not in m])
def test_a_root_is_held_to_the_rules_of_whitelisted_folders(config, path, match):
    # only "/" was refused: /proc, /dev and /tmp could be a call's root (found by review). The
    # host's runtime folder may hold one: the daemon's own state folder is there under systemd.
    refused(config, request(path), match)


def test_whitelisted_folders_under_tmp_are_accepted(config, root, tmp_path):
    libs = tmp_path / "libs"
    libs.mkdir()
    assert plan.build(request(root, whitelisted_paths=[str(libs)]), config).search_paths == [str(libs)]


def test_more_host_paths_than_one_message_can_carry_are_refused(config, root, tmp_path):
    folders = []
    for i in range(filesystem.MAX_HOST_PATHS + 1):
        (tmp_path / f"lib{i}").mkdir()
        folders.append(str(tmp_path / f"lib{i}"))
    assert len(plan.build(request(root, whitelisted_paths=folders[:-1]), config).host_paths) == filesystem.MAX_HOST_PATHS
    refused(config, request(root, whitelisted_paths=folders), "at most 250")


def test_bad_external_names_are_refused(config, root):
    refused(config, request(root, external=["os/path"]), "must be Python names")
    # a submodule alone would in fact allow its whole package: refused, naming the package
    refused(config, request(root, external=["os.path"]), "cannot be allowed without all of 'os'; name 'os'")
    refused(config, request(root, external=["x"] * 300), "at most")
    # the zygote's own entry module, not a module a guest could mean
    refused(config, request(root, external=["__main__"]), "may not name '__main__'")
    # the runtime's own packages: a guest got isorun's internals (and could forge a plugin's failure)
    refused(config, request(root, external=["isorund"]), "may not name 'isorund'")
    refused(config, request(root, external=["\uff49sorun"]), "may not name '\uff49sorun'")


def test_external_names_are_allowed_as_the_guests_import_spells_them(config, root):
    # "ｃｓｖ" was allowed as itself, and the guest's "import ｃｓｖ" (csv to Python) refused
    assert "csv" in plan.build(request(root, external=["\uff43\uff53\uff56"]), config).allowed


def test_only_site_packages_folders_are_bound_for_externals(config, root):
    assert plan.site_folder_of("json") is None          # stdlib: bound for every sandbox
    assert plan.site_folder_of("no_such_module_x") is None
    folder = plan.site_folder_of("grpc")
    assert folder is not None and folder.endswith("site-packages")


def test_the_largest_plan_the_daemon_can_make_fits_the_sandboxs_plan_frame(config):
    """The sandbox reads its plan under a cap of its own (``MAX_PLAN_BYTES``), well under the
    request's: every field of a plan is bounded here, and all of them at their bound at once
    must still fit, or a request this module accepts would fail in its sandbox."""
    path = "/" + "p" * (plan.MAX_PATH - 1)
    worst = sandbox_pb2.CallPlan(
        call_id="f" * 16, root=path, file=path[1:],
        allowed=["n" * plan.MAX_NAME] * plan.MAX_LIST + list(config.default_external),
        host_paths=[path] * filesystem.MAX_HOST_PATHS, search_paths=[path] * plan.MAX_LIST,
        extensions=["." + "e" * (plan.MAX_EXTENSION - 1)] * plan.MAX_LIST,
        limits=plan._limits(pb.Limits(), config.limits, config.max_timeout), timeout_seconds=config.max_timeout,
        report_compiled=True)
    # and the code cache's modules, up to their own bound (isorund.code_cache)
    module = sandbox_pb2.CompiledModule(path=path, source_hash=b"h" * 8, code=b"c" * (MAX_COMPILED_BYTES - MODULE_FRAMING_BYTES - 8000))
    assert module.ByteSize() + MODULE_FRAMING_BYTES <= MAX_COMPILED_BYTES
    worst.modules.append(module)
    assert worst.ByteSize() <= MAX_PLAN_BYTES, worst.ByteSize()


@pytest.mark.parametrize("field", ["root", "whitelisted_paths"])
def test_a_path_longer_than_the_kernel_resolves_is_refused(config, root, field):
    long_path = "/" + "p" * plan.MAX_PATH
    req = request(long_path) if field == "root" else request(root, whitelisted_paths=[long_path])
    refused(config, req, "absolute folder path")


@pytest.mark.parametrize("where", ["root", "whitelisted_paths"])
def test_a_folder_holding_a_named_pipe_is_refused_naming_it(config, root, tmp_path, where):
    folder = root if where == "root" else str(tmp_path / "libs")
    os.makedirs(os.path.join(folder, "deep"), exist_ok=True)
    os.mkfifo(os.path.join(folder, "deep", "feed"))
    req = request(root) if where == "root" else request(root, whitelisted_paths=[folder])
    with pytest.raises(plan.RequestError, match=f"{where}.* holds a named pipe, '{folder}/deep/feed'"):
        plan.check_folders(plan.build(req, config))


def test_a_quick_check_leaves_a_folder_it_would_have_to_read_to_the_thread(config, root, monkeypatch):
    """What the event loop may not do is not a refusal: the caller checks again on a thread."""
    monkeypatch.setattr(plan.named_pipes, "_seen", {})
    with pytest.raises(plan.named_pipes.NotRemembered):
        plan.check_folders(plan.build(request(root), config), quick=True)


def test_a_quick_check_has_one_allowance_of_folders_for_all_the_calls_folders(config, root, tmp_path, monkeypatch):
    """Counted per tree, 250 whitelisted folders of 32 remembered folders each had the event
    loop open ~8,000 folders a call (34 ms: found by a probe)."""
    monkeypatch.setattr(plan.named_pipes, "_SETTLED_NS", -10**12)
    monkeypatch.setattr(plan.named_pipes, "_seen", {})
    libs = []
    for i in range(3):
        lib = tmp_path / f"lib{i}"
        for j in range(plan.named_pipes.QUICK_FOLDERS // 2):
            (lib / f"d{j}").mkdir(parents=True)
        libs.append(str(lib))
    p = plan.build(request(root, whitelisted_paths=libs), config)
    plan.check_folders(p)  # all remembered now; each tree alone would pass a quick check
    with pytest.raises(plan.named_pipes.NotRemembered, match="more than 32 folders"):
        plan.check_folders(p, quick=True)


def test_a_whitelisted_folder_given_many_times_is_checked_once(config, root, tmp_path, monkeypatch):
    """256 copies of one large folder were walked 256 times, in the event loop (a probe stalled
    other clients for 8 s with a 10,000-folder tree)."""
    libs = tmp_path / "libs"
    libs.mkdir()
    walked = []
    monkeypatch.setattr(plan.named_pipes, "find_pipe", lambda folder, quick=None: walked.append(folder))
    plan.check_folders(plan.build(request(root, whitelisted_paths=[str(libs)] * 256), config))
    assert walked == [os.path.realpath(root), str(libs)]


def test_a_path_that_resolves_to_a_name_that_is_not_utf8_is_refused(config, root, tmp_path):
    """It was an unexpected UnicodeEncodeError building the sandbox's plan, with a traceback."""
    odd = os.path.join(os.fsencode(str(tmp_path)), b"odd\xff")
    os.mkdir(odd)
    os.symlink(odd, tmp_path / "link")
    refused(config, request(str(tmp_path / "link")), "root .* is not UTF-8 text")
    refused(config, request(root, whitelisted_paths=[str(tmp_path / "link")]), "whitelisted_paths.* is not UTF-8 text")
    os.symlink(os.path.join(odd, b"x.py"), os.path.join(os.fsencode(root), b"linked.py"))
    with open(os.path.join(odd, b"x.py"), "w") as f:
        f.write("x = 1\n")
    refused(config, request(os.path.dirname(root), file=os.path.basename(root) + "/linked.py"), "file .* is not UTF-8")


def test_a_whitelisted_folder_the_guest_cannot_read_is_refused(config, root, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    refused(config, request(root, whitelisted_paths=[str(private)]), "cannot be read by the sandbox's user")


def test_a_daemon_out_of_descriptors_answers_retry_later_not_the_callers_invalid_argument(config, root):
    """Run out of descriptors (a shell's 1024 under many connections), the daemon refused calls
    as INVALID_ARGUMENT, "cannot be checked for named pipes: Too many open files"."""
    from isorund.admission import OutOfDescriptors, QueueFull
    from processes import descriptors_left
    deep = os.path.join(root, *[f"d{i}" for i in range(20)])
    os.makedirs(deep)
    p = plan.build(request(root), config)
    with descriptors_left(4), pytest.raises(OutOfDescriptors, match="no file descriptor left .* retry later") as raised:
        plan.check_folders(p)
    assert isinstance(raised.value, QueueFull)  # RESOURCE_EXHAUSTED, as a full queue
