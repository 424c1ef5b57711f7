"""The daemon's configuration: defaults, validation messages that name the key, the TOML the
daemon prints, and the README table that must equal the generated reference."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import sys
import tomllib

import pytest

from isorund import cli
from isorund import config as config_module
from isorund.config import Config, ConfigError, LimitsConfig, PluginsConfig, reference

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import update_readme_config  # noqa: E402


def load_text(tmp_path, text: str, **overrides) -> Config:
    path = tmp_path / "isorund.toml"
    path.write_text(text)
    return Config.load(str(path), overrides)


def refusal(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    return str(e.value)


def test_the_defaults_are_a_valid_config():
    config = Config.load(None)
    assert config.max_concurrency >= 1 and config.socket_mode == 0o660
    assert config.access_ids() == (frozenset(), frozenset())


def test_every_key_is_documented_with_its_default():
    table = reference()
    for cls, prefix in ((Config, ""), (LimitsConfig, "limits."), (PluginsConfig, "plugins.")):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{prefix}{f.name} has no documentation"
            if f.name not in ("limits", "plugins") or cls is not Config:
                assert f"| `{prefix}{f.name}` |" in table


@pytest.mark.parametrize("text, key", [
    ("max_concurency = 4\n", "max_concurency"),
    ("[limits]\nmemory = 5\n", "limits.memory"),
    ("[plugins]\ncompiler = {}\n", "plugins.compiler"),
    ("[sandbox]\nx = 1\n", "sandbox"),
])
def test_an_unknown_key_is_refused_by_name(tmp_path, text, key):
    message = refusal(tmp_path, text)
    assert f"unknown config key '{key}'" in message


@pytest.mark.parametrize("text, key", [
    ('max_concurrency = "8"\n', "max_concurrency"),
    ("max_concurrency = 0\n", "max_concurrency"),
    # a typo that would have the zygote prepare 40,000 sandboxes (~120 GiB) at start
    ("pool_size = 40000\n", "pool_size"),
    ("pool_size = 257\n", "pool_size"),
    ("max_concurrency = 300\npool_size = 301\n", "pool_size"),
    ("queue_size = -1\n", "queue_size"),
    ("code_cache_bytes = -1\n", "code_cache_bytes"),
    ("max_connections = 0\n", "max_connections"),
    ("max_connections = 2000000\n", "max_connections"),
    ("default_timeout = 0\n", "default_timeout"),
    ("max_timeout = 1.0\ndefault_timeout = 2.0\n", "max_timeout"),
    ('socket = "relative.sock"\n', "socket"),
    (f'socket = "/tmp/{"d" * 100}/s.sock"\n', "socket"),
    ("socket_mode = 0o1777\n", "socket_mode"),
    ('socket_group = "no-such-group-here"\n', "socket_group"),
    ('allowed_uids = ["no-such-user-here"]\n', "allowed_uids"),
    ("allowed_gids = [-5]\n", "allowed_gids"),
    ('metrics_address = "9464"\n', "metrics_address"),
    ('metrics_address = "localhost:99999"\n', "metrics_address"),
    ('log_level = "chatty"\n', "log_level"),
    ("shutdown_grace = -1\n", "shutdown_grace"),
    ("start_timeout = 0\n", "start_timeout"),
    ("shutdown_grace = inf\n", "shutdown_grace"),
    # the answer to a unary Run holds the result and the console: it must fit in a message
    ("max_request_bytes = 1048576\n", "limits.output_bytes"),  # its default 1 MiB alone fills it
    ("max_request_bytes = 2097152\n", "limits.result_bytes"),
    ('default_external = ["os.path"]\n', "default_external"),
    ("start_timeout = inf\n", "start_timeout"),
    ("insecure_no_isolation = 1\n", "insecure_no_isolation"),
    ('default_external = ["os path"]\n', "default_external"),
    ('default_external = ["__main__"]\n', "default_external"),
    ('plugin_paths = ["relative"]\n', "plugin_paths"),
    ("[limits]\nmemory_bytes = 0\n", "limits.memory_bytes"),
    ('[plugins.compilers]\nbad = "no-colon"\n', "plugins.compilers.bad"),
    ('[types]\n"acme.Money" = 5\n', "types.acme.Money"),
    # the zygote's type registry refused these only at start, after --print-config passed them
    ('[types]\n"int" = "a:b"\n', "types"),
    ('[types]\n"1bad" = "a:b"\n', "types"),
    ('[types]\n"acme Money" = "a:b"\n', "types"),
    # it named limits.result_bytes, with a negative bound
    ("[limits]\noutput_bytes = 67108864\n", "limits.output_bytes"),
    ("limits = 5\n", "limits"),
    # values the daemon would accept and then fail on later: at gRPC's start, on the fifth
    # sandbox's uid map, when turning a timeout into an rlimit, on the guest's first import
    ("max_request_bytes = 9999999999999\n", "max_request_bytes"),
    # a request of the largest size could never be held
    ("max_held_request_bytes = 1048576\n", "max_held_request_bytes"),
    # gRPC would refuse calls the queue could hold, with no log line
    ("max_concurrency = 8\nqueue_size = 64\nmax_open_rpcs = 72\n", "max_open_rpcs"),
    ("max_open_rpcs = 3000000000\n", "max_open_rpcs"),  # past a C int: gRPC's OverflowError at start
    ("sandbox_uid_base = 4294967290\n", "sandbox_uid_count"),
    ("max_timeout = inf\n", "max_timeout"),
    ("default_timeout = nan\n", "default_timeout"),
    ("[limits]\ncpu_seconds = inf\n", "limits.cpu_seconds"),
    ("[limits]\nmax_open_files = 3\n", "limits.max_open_files"),
])
def test_a_bad_value_is_refused_naming_the_key(tmp_path, text, key):
    assert f"config key '{key}'" in refusal(tmp_path, text)


def test_a_file_that_is_not_toml_is_refused_with_its_path(tmp_path):
    message = refusal(tmp_path, "max_concurrency = = 2\n")
    assert "isorund.toml" in message and "not valid TOML" in message


def test_a_file_that_is_not_utf8_is_refused_as_not_toml(tmp_path):
    path = tmp_path / "isorund.toml"
    path.write_bytes(b"log_level = \"\xff\"\n")
    with pytest.raises(ConfigError, match="isorund.toml is not valid TOML: not UTF-8"):
        Config.load(str(path))


def test_the_largest_accepted_values_are_a_valid_config():
    socket = "/run/" + "s" * 102  # 107 bytes: sun_path's 108 with the NUL (one more is refused)
    config = Config.load(None, {"max_request_bytes": 256 << 20, "max_timeout": 1e6, "socket": socket,
                                "sandbox_uid_base": 2**32 - 2 - 65535, "sandbox_uid_count": 65536})
    assert config.sandbox_uid_base + config.sandbox_uid_count - 1 == 2**32 - 2
    assert len(config.socket) == 107
    with pytest.raises(ConfigError, match="socket' must be a path of at most 107 bytes"):
        Config.load(None, {"socket": socket + "s"})


def test_users_and_groups_may_be_named_or_numbered(tmp_path):
    config = load_text(tmp_path, 'allowed_uids = ["root", 1000]\nallowed_gids = ["root", "7"]\nsocket_group = "root"\n')
    assert config.access_ids() == (frozenset({0, 1000}), frozenset({0, 7}))


def test_command_line_flags_override_the_file(tmp_path):
    path = tmp_path / "isorund.toml"
    path.write_text("max_concurrency = 3\nqueue_size = 5\n")
    args = cli.parse_args(["--config", str(path), "--max-concurrency", "7"])
    config = Config.load(args.config, {"max_concurrency": args.max_concurrency, "queue_size": args.queue_size})
    assert (config.max_concurrency, config.queue_size) == (7, 5)


def test_the_printed_config_reads_back_as_the_same_config(tmp_path):
    config = load_text(tmp_path, '''
        allowed_uids = ["root", 5]
        metrics_address = "[::1]:0"
        shutdown_grace = 2
        [types]
        "acme.Money" = "acme:money"
        [plugins.compilers]
        "plus-to-times" = "p:q"
        [limits]
        cpu_seconds = 1.5
    '''.replace("\n        ", "\n"))
    text = config.to_toml()
    assert "socket_mode = 0o660" in text
    assert Config.load(None, tomllib.loads(text)) == config


def test_print_config_shows_the_effective_config_as_toml(tmp_path, capsys):
    path = tmp_path / "isorund.toml"
    path.write_text("queue_size = 5\n[limits]\ntmp_bytes = 8388608\n")
    assert cli.main(["--config", str(path), "--max-concurrency", "3", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["max_concurrency"] == 3 and printed["queue_size"] == 5
    assert printed["limits"]["tmp_bytes"] == 8388608 and printed["pool_size"] == Config().pool_size


def test_the_command_line_reports_a_bad_key_and_exits_2(tmp_path, capsys):
    path = tmp_path / "isorund.toml"
    path.write_text("max_concurrency = 0\n")
    assert cli.main(["--config", str(path), "--print-config"]) == 2
    assert "config key 'max_concurrency' must be >= 1, got 0" in capsys.readouterr().err


def test_a_table_cell_never_contains_a_bare_pipe():
    for row in reference().splitlines()[2:]:
        assert row.replace("\\|", "").count("|") == 4, row


@pytest.mark.parametrize("name", update_readme_config.FILES)
def test_the_configuration_tables_are_the_generated_reference(name):
    text = (REPO / name).read_text()
    assert update_readme_config.START in text and update_readme_config.END in text, (
        f"{name} needs the config-reference markers")
    if update_readme_config.render(text, name) != text:
        pytest.fail(f"{name}'s configuration table differs from `python -m isorund --config-reference`; "
                    "run `.venv/bin/python tools/update_readme_config.py`")


def test_the_pool_may_be_as_large_as_max_concurrency_past_256(tmp_path):
    assert load_text(tmp_path, "max_concurrency = 300\npool_size = 300\n").pool_size == 300
    assert load_text(tmp_path, "pool_size = 256\n").pool_size == 256
    assert "from 1 to 256 (256, or max_concurrency if larger" in refusal(tmp_path, "pool_size = 40000\n")


@pytest.mark.parametrize("text, key", [
    # each passed this check and then failed the start: in the request's protobuf field (a raw
    # "Value out of range" traceback), in Python's setrlimit, or in the sandbox's, blaming the host
    (f"[limits]\nmemory_bytes = {2**64}\n", "limits.memory_bytes"),
    (f"[limits]\nmemory_bytes = {2**63}\n", "limits.memory_bytes"),
    (f"[limits]\nmax_file_bytes = {2**64}\n", "limits.max_file_bytes"),
    (f"[limits]\ntmp_bytes = {2**64}\n", "limits.tmp_bytes"),
    (f"[limits]\nmax_processes = {2**32}\n", "limits.max_processes"),
    ("[limits]\nmax_open_files = 100000000\n", "limits.max_open_files"),
    (f"[limits]\noutput_bytes = {2**64}\n", "limits.output_bytes"),
    (f"[limits]\nresult_bytes = {2**64}\n", "limits.result_bytes"),
])
def test_a_limit_past_what_it_must_fit_is_refused_naming_the_key_and_its_range(tmp_path, text, key):
    message = refusal(tmp_path, text)
    name = key.split(".")[1]
    assert f"config key '{key}' must be <= {config_module.limit_ceiling(name)[0]} (" in message, message


def test_the_largest_limits_are_a_valid_config():
    ceilings = {name: config_module.limit_ceiling(name)[0]
                for name in ("memory_bytes", "max_processes", "max_open_files", "max_file_bytes", "tmp_bytes")}
    assert Config.load(None, {"limits": ceilings}).limits.max_open_files == ceilings["max_open_files"]
    assert ceilings["max_open_files"] <= int(open("/proc/sys/fs/nr_open").read())
    assert ceilings["memory_bytes"] <= 2**63 - 1 and ceilings["max_processes"] <= 2**32 - 1  # Limits' fields


def test_a_limit_over_the_daemons_own_hard_rlimit_is_refused_as_one_its_sandboxes_cannot_raise(tmp_path, monkeypatch):
    """A sandbox inherits the daemon's hard rlimits and cannot raise them (that needs
    CAP_SYS_RESOURCE of the host): max_open_files = 30000 under a hard limit of 20000 failed the
    start in setrlimit, "cannot build a sandbox on this host"."""
    real = config_module.resource.getrlimit
    monkeypatch.setattr(config_module.resource, "getrlimit", lambda which: (
        (1024, 20000) if which == config_module.resource.RLIMIT_NOFILE else real(which)))
    message = refusal(tmp_path, "[limits]\nmax_open_files = 30000\n")
    assert ("config key 'limits.max_open_files' must be <= 20000 (the daemon's own hard RLIMIT_NOFILE, "
            "which its sandboxes inherit and cannot raise), got 30000") in message
    assert load_text(tmp_path, "[limits]\nmax_open_files = 20000\n").limits.max_open_files == 20000


@pytest.mark.parametrize("text", [
    'default_external = ["json", "isorund"]\n',  # the daemon's own package, in every guest
    'default_external = ["isorun"]\n',
    'default_external = ["ｉｓｏｒｕｎｄ"]\n',  # as a guest's import statement spells it: isorund
])
def test_default_external_may_not_name_the_runtimes_own_modules_as_a_requests_external_may_not(tmp_path, text):
    assert "config key 'default_external' must be a list of top-level module names (each allows its " \
           "submodules), none of the runtime's own (__main__, isorund, isorun), got" in refusal(tmp_path, text)


@pytest.mark.parametrize("group", ["compilers", "resolvers", "args_resolvers"])
def test_a_plugin_without_a_name_is_refused_as_no_request_could_name_it(tmp_path, group):
    message = refusal(tmp_path, f'[plugins.{group}]\n"" = "p:q"\n')
    assert f"config key 'plugins.{group}' must be a table of plugins with non-empty names, got ''" in message


def test_a_config_file_that_is_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """open() of a pipe with no writer blocked the start, and SIGTERM could not end it."""
    fifo = tmp_path / "isorund.toml"
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("Config.load waited for the pipe's writer")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        with pytest.raises(ConfigError, match=f"config file {fifo} is not a regular file"):
            Config.load(str(fifo))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_a_config_file_that_is_a_device_or_a_folder_is_refused_naming_it(path):
    # /dev/zero was read until the daemon held 3.6 GB
    with pytest.raises(ConfigError, match=f"config file {path} is not a regular file"):
        Config.load(path)


def test_a_config_file_over_a_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "isorund.toml"
    path.write_text("# " + "x" * (1 << 20) + "\nqueue_size = 5\n")
    with pytest.raises(ConfigError, match=f"config file {path} is larger than 1 MiB"):
        Config.load(str(path))
    path.write_text("# " + "x" * ((1 << 20) - 20) + "\nqueue_size = 5\n")  # just under: read whole
    assert Config.load(str(path)).queue_size == 5


def test_the_units_stop_timeout_outlasts_the_longest_stop_of_the_shipped_config():
    """After shutdown_grace a stop takes up to KILL_SLACK for killed calls to answer,
    FLUSH_SECONDS for gRPC to write the answers out and end what is left (a RunStream whose
    client never reads), and 2 s for the zygote to exit (launcher's stop); systemd kills a daemon
    still stopping at TimeoutStopSec, its last answers unsent. (The docs said grace + 2 s.)"""
    from isorund import server
    zygote_exit = 2.0
    unit = (REPO / "systemd" / "isorund.service").read_text()
    timeout = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    grace = Config.load(str(REPO / "systemd" / "isorund.toml")).shutdown_grace
    assert timeout and float(timeout.group(1)) >= grace + server.KILL_SLACK + server.FLUSH_SECONDS + zygote_exit
    assert server.KILL_SLACK + server.FLUSH_SECONDS + zygote_exit <= 5  # the docs' "shutdown_grace + 5 s"


def test_type_names_follow_the_codecs_rule_and_built_in_ones_are_refused(tmp_path):
    from isorun._wire import BUILTIN_NAMES
    config = load_text(tmp_path, '[types]\n"acme.Money" = "a:b"\n"_x-1.y" = "a:b"\n' + f'"{"n" * 200}" = "a:b"\n')
    assert len(config.types) == 3
    assert "got '" + "n" * 201 + "'" in refusal(tmp_path, f'[types]\n"{"n" * 201}" = "a:b"\n')
    for name in BUILTIN_NAMES:
        assert (f"config key 'types' must be a table of names other than the 15 built-in ones ({name!r} is built "
                f"in: use a qualified name, such as 'acme.{name}'), got {name!r}") in \
            refusal(tmp_path, f'[types]\n"{name}" = "a:b"\n')


def test_console_bytes_that_leave_no_room_for_a_result_are_refused_as_output_bytes_with_its_bound(tmp_path):
    message = refusal(tmp_path, "[limits]\noutput_bytes = 67108864\n")
    assert ("config key 'limits.output_bytes' must be < max_request_bytes - 64 KiB (67043328): result_bytes "
            "(at least 1) must fit beside it in one answer, got 67108864") in message
    # room for output but not for this result: result_bytes is the one to lower
    message = refusal(tmp_path, "[limits]\noutput_bytes = 62914560\n")
    assert "config key 'limits.result_bytes' must be <= max_request_bytes - limits.output_bytes - 64 KiB (4128768)" \
        in message
    assert load_text(tmp_path, "[limits]\noutput_bytes = 67043327\nresult_bytes = 1\n").limits.output_bytes == 67043327


def test_a_socket_path_through_a_file_is_refused_naming_the_key(tmp_path):
    """The daemon makes the socket's missing folders at start, where a file in the way was a
    bare NotADirectoryError naming no key."""
    (tmp_path / "notes.txt").write_text("")
    for socket in (tmp_path / "notes.txt" / "s.sock", tmp_path / "notes.txt" / "a" / "s.sock"):
        with pytest.raises(ConfigError) as e:
            Config.load(None, {"socket": str(socket)})
        assert (f"config key 'socket' must be a path under folders (missing ones are made at start), but "
                f"{tmp_path}/notes.txt is not a folder, got '{socket}'") in str(e.value)
    assert Config.load(None, {"socket": str(tmp_path / "new" / "folders" / "s.sock")}).socket.endswith("s.sock")
