"""The daemon's configuration: defaults, validation messages that name the key, the TOML the
daemon prints, and the README table that must equal the generated reference."""
from __future__ import annotations

import dataclasses
import pathlib
import sys
import tomllib

import pytest

from isorund import cli
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
    ("max_request_bytes = 1048576\n", "limits.result_bytes"),
    ('default_external = ["os.path"]\n', "default_external"),
    ("start_timeout = inf\n", "start_timeout"),
    ("insecure_no_isolation = 1\n", "insecure_no_isolation"),
    ('default_external = ["os path"]\n', "default_external"),
    ('default_external = ["__main__"]\n', "default_external"),
    ('plugin_paths = ["relative"]\n', "plugin_paths"),
    ("[limits]\nmemory_bytes = 0\n", "limits.memory_bytes"),
    ('[plugins.compilers]\nbad = "no-colon"\n', "plugins.compilers.bad"),
    ('[types]\n"acme.Money" = 5\n', "types.acme.Money"),
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
