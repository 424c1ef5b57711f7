"""The daemon's configuration: every key, its default and its meaning, in one place.

``Config.load(path, overrides)`` reads TOML (``tomllib``), applies command-line overrides and
validates everything before the daemon starts; an unknown key or a bad value stops the start
with a message naming the key. The README's configuration table is generated from the
``doc`` metadata below (``python -m isorund --config-reference``) and a test keeps the two equal.
"""
from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import re
import resource
import stat
import tomllib
from dataclasses import dataclass, field, fields

MiB = 1 << 20
ANSWER_FRAMING = 64 * 1024  # an answer's own fields and framing around the result and console
MAX_SECONDS = 1e6  # timeouts and CPU limits: finite, and within what rlimits and deadlines hold
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, so it is never a sandbox's id
# Prepared sandboxes hold ~3 MiB and a process each (a pool of 500 took 1.6 GiB here).
MAX_POOL_SIZE = 256
# The sandbox reads its plan (the whole request) in one frame of at most 256 MiB.
MAX_MESSAGE_BYTES = 256 * MiB
# Below these, a call fails for a reason its error would not name: the runtime holds four
# descriptors (stdin, stdout, stderr and its channel) and opens each source file it imports;
# a sandbox maps about 36 MiB before its guest allocates anything, so a smaller address space
# is no limit but a broken call (one that allocated nothing succeeded with 1 byte).
MIN_LIMITS = {"max_open_files": 8, "memory_bytes": 48 * MiB}
# The largest finite rlimit a sandbox can set: Python's resource.setrlimit takes a signed C long
# long, so RLIM_INFINITY - 1 (2**64 - 2) is out of its reach ("Python int too large to convert to
# C long", a sandbox that failed at start).
RLIM_MAX = 2**63 - 1
# The kernel's most tasks on a 64-bit host (PID_MAX_LIMIT); a cgroup's pids.max refuses more.
PID_MAX_LIMIT = 4 * 1024 * 1024
# The rlimit each of these [limits] keys becomes in the sandbox (isorund/sandbox/limits.py).
RLIMIT_OF = {"memory_bytes": "RLIMIT_AS", "max_processes": "RLIMIT_NPROC", "max_open_files": "RLIMIT_NOFILE",
             "max_file_bytes": "RLIMIT_FSIZE"}
# A config file is a few KiB of TOML; reading more is a mistake (a device, a log file) that would
# hold the start for as long as the read went on.
MAX_CONFIG_FILE_BYTES = 1 * MiB

DEFAULT_EXTERNAL = (
    "abc", "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections",
    "colorsys", "contextlib", "copy", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fractions", "functools", "hashlib", "heapq", "hmac", "itertools", "json", "math",
    "numbers", "operator", "pprint", "random", "re", "reprlib", "statistics", "string",
    "struct", "textwrap", "typing", "unicodedata", "uuid",
)

# Modules of the sandbox's own runtime: what a guest would get is isorun's internals.
RUNTIME_MODULES = {"__main__": "entry module", "isorund": "package", "isorun": "value codec's package"}


def runtime_module(name: str) -> str | None:
    """What top-level module ``name`` is to the sandbox's runtime (its "package", …), or None
    when it is none of its own. A guest allowed to import one would get isorun's internals, so
    neither a request's ``external`` (plan.py) nor ``default_external`` may name one; compared
    as the guest's import statement spells the name (``ｉｓｏｒｕｎｄ`` is ``isorund``)."""
    from isorund.sandbox.import_policy import python_name  # here: isorund.sandbox imports this module
    return RUNTIME_MODULES.get(python_name(name))


class ConfigError(ValueError):
    """A configuration key is unknown or its value is out of range; the message names it."""


class StartError(RuntimeError):
    """The daemon cannot start with this configuration on this host (a cgroup_root it cannot
    use, a zygote that failed); the message says why, whole."""


def _key(default, doc: str, **extra):
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"doc": doc, **extra}, **factory)


LOG_LEVELS = ("debug", "info", "warning", "error")  # from the most said to the least

def default_socket() -> str:
    if os.geteuid() == 0:
        return "/run/isorund/isorund.sock"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "isorund.sock")


@dataclass(frozen=True)
class LimitsConfig:
    """Per-call limits; a request may lower each of them, never raise it."""
    memory_bytes: int = _key(512 * MiB, "Address space of the guest process (RLIMIT_AS); over it, `ResourceLimitError(limit='memory')`. The guest's code runs without its last sixteenth (at most 16 MiB), kept to report the outcome. The runtime itself takes about 36 MiB of it (more with large plugins), so it is at least 48 MiB, in the config and in a request; the daemon does not start when its self-test call cannot take 8 MiB more. At most 2^63 − 1 (the largest rlimit a sandbox can set) and the daemon's own hard RLIMIT_AS (`ulimit -Hv`, systemd's `LimitAS=`), which its sandboxes inherit and cannot raise.")
    max_processes: int = _key(32, "Processes and threads one call may have at once (RLIMIT_NPROC of its own uid). From 1 to 4194304 (the kernel's most tasks, and the most a cgroup's `pids.max` takes) and at most the daemon's own hard RLIMIT_NPROC (`ulimit -Hu`, systemd's `LimitNPROC=`), which its sandboxes inherit and cannot raise.")
    max_open_files: int = _key(64, "Open file descriptors of the guest (RLIMIT_NOFILE); at least 8, which the runtime needs for itself, and at most the host's `/proc/sys/fs/nr_open` and the daemon's own hard RLIMIT_NOFILE (`ulimit -Hn`, systemd's `LimitNOFILE=`), which its sandboxes inherit and cannot raise.")
    max_file_bytes: int = _key(16 * MiB, "Largest file a guest may write in its private /tmp (RLIMIT_FSIZE). From 1 to 2^63 − 1 (the largest rlimit a sandbox can set) and at most the daemon's own hard RLIMIT_FSIZE (`ulimit -Hf`, systemd's `LimitFSIZE=`).")
    output_bytes: int = _key(1 * MiB, "Console bytes one call may print, each line counted with its few bytes of framing; over it, or on a line longer than it (sent at once, however it was written), `ResourceLimitError(limit='output')`. At least 1 and less than `max_request_bytes` − 64 KiB (`result_bytes` must fit beside it).")
    result_bytes: int = _key(16 * MiB, "Encoded size of a result; over it, `ResourceLimitError(limit='result')`. At least 1 and at most `max_request_bytes` − `output_bytes` − 64 KiB (result and console travel in one answer).")
    cpu_seconds: float = _key(0.0, "CPU seconds of the guest (RLIMIT_CPU, which counts whole seconds: a fraction is rounded up); 0 means the call's timeout plus one second, so a guest spinning to its deadline is reported as a timeout. At most 1e6.")
    tmp_bytes: int = _key(16 * MiB, "Size of the call's private tmpfs /tmp. From 1 to 2^63 − 1 (with a cgroup, `memory_bytes` + `tmp_bytes` is the call's `memory.max`, which the kernel reads as 64 bits).")


@dataclass(frozen=True)
class PluginsConfig:
    compilers: dict = _key(dict, "Source-transform plugins: name = \"module:attr\", a callable `(source, filename) -> source`.")
    resolvers: dict = _key(dict, "Module-resolver plugins: name = \"module:attr\", a factory `(options) -> resolve(name) -> path | None`.")
    args_resolvers: dict = _key(dict, "Argument plugins: name = \"module:attr\", a callable `(args) -> args`.")


@dataclass(frozen=True)
class Config:
    socket: str = _key(default_socket, "Unix socket the daemon listens on (`/run/isorund/isorund.sock` as root, else `$XDG_RUNTIME_DIR/isorund.sock`); at most 107 bytes. Folders of the path that do not exist are made with mode 0755, whatever the umask (under the unit's `UMask=0077` they were 0700, and `socket_group` could not reach the socket); existing ones are left as they are, and a file in the way is refused (exit status 2).")
    socket_mode: int = _key(0o660, "Permission bits of the socket (TOML octal, e.g. `0o660`): owner and `socket_group` may connect.")
    socket_group: str = _key("", "Group owning the socket (name or number); empty keeps the daemon's group.")
    allowed_uids: list = _key(list, "Users (numbers or names) allowed to call; with `allowed_gids` empty too, every peer that can open the socket may. Checked with SO_PEERCRED; others get `PERMISSION_DENIED`.")
    allowed_gids: list = _key(list, "Groups (numbers or names) whose members may call: the peer's primary or a supplementary group (SO_PEERGROUPS).")
    max_concurrency: int = _key(8, "Sandboxes running at once; further calls queue.")
    queue_size: int = _key(64, "Calls that may wait for a sandbox; past it, `RESOURCE_EXHAUSTED`.")
    max_connections: int = _key(1024, "Client connections the socket holds open at once (each runner keeps one); further ones are closed as they come, by gRPC before the daemon sees them (so not logged), and their callers get `DaemonUnavailable` naming this key. The daemon raises its soft open-file limit to its hard one at start and does not start (exit status 1, a `fatal` line naming both) when that is below what these connections (3 descriptors each through the allowlist's front), its sandboxes and its folder checks may hold: about 2,100 with the defaults on 2 CPUs, of which about 1,100 (the daemon's own 512, 16 per sandbox of `max_concurrency` + `pool_size`, and the folder checks' share, which grows with the CPUs) is needed whatever `max_connections` is, so a hard limit of 1024 fits no value of it (systemd's unit sets `LimitNOFILE=65536`). Out of descriptors all the same, a call is refused `RESOURCE_EXHAUSTED` (`ResourceLimitError(limit=\"queue\")`, logged `out_of_descriptors`), retry later.")
    max_open_rpcs: int = _key(4096, "RPCs open at once over all connections, counted from their first bytes: gRPC refuses more with `RESOURCE_EXHAUSTED` at once, or cancels those it has not handed to the daemon yet (`CANCELLED`; both `ResourceLimitError(limit=\"queue\")` in the clients, neither logged, unlike the queue's refusals). Bounds what streams that never send their request cost the daemon (~20 KiB each). More than `max_concurrency + queue_size`, at most 1000000.")
    pool_size: int = _key(4, "Sandboxes prepared ahead of calls (each serves exactly one call). At most 256, or `max_concurrency` if that is larger: each prepared sandbox holds ~3 MiB and a process, and a typo such as 40000 would take the host's memory.")
    code_cache_bytes: int = _key(32 * MiB, "Compiled guest modules the daemon keeps, least recently used dropped past this size: a call's file and the guest modules its import statements load are compiled once per file version, by the first call's sandbox before any guest code runs, then handed to later calls. 0 turns it off (every call compiles).")
    default_timeout: float = _key(5.0, "Wall-clock timeout of a call that names none, in seconds.")
    max_timeout: float = _key(30.0, "Largest timeout a call may ask for, in seconds (at most 1e6).")
    default_external: list = _key(lambda: list(DEFAULT_EXTERNAL), "Top-level modules every guest may import (pure computation). Each is imported once by the zygote, so every sandbox starts with it loaded; one that is not installed is named in a `default_external_missing` warning at start.")
    plugin_paths: list = _key(list, "Folders added to the import path to load plugins and operator types from.")
    plugins: PluginsConfig = _key(PluginsConfig, "Named plugins, in `[plugins.compilers]`, `[plugins.resolvers]`, `[plugins.args_resolvers]`.")
    types: dict = _key(dict, "Operator value types: `\"acme.Money\" = \"module:attr\"`, an object with `type`, `encode(obj)` and `decode(payload)`. A name is 1–200 letters, digits, `_`, `.` or `-`, starting with a letter or `_`, and none of the 15 built-in ones (docs/values.md §5).")
    limits: LimitsConfig = _key(LimitsConfig, "Per-call limits, in `[limits]` (see below).")
    sandbox_uid_base: int = _key(1_500_000, "First host uid/gid given to sandboxes; each live sandbox gets its own. No one else may hold one: the daemon does not start (exit status 1) when a user or group of the host, or an entry of `/etc/subuid` or `/etc/subgid`, holds an id of the range (a process with a guest's uid could read its memory, stop or kill it). Two daemons on one host need ranges that do not overlap (operations.md, \"Two daemons on one host\").")
    sandbox_uid_count: int = _key(65536, "How many host ids, from `sandbox_uid_base`, sandboxes may use; at least `max_concurrency` + `pool_size` + 1. An id comes back once its sandbox has exited, so with a range near that least, calls can wait a moment for the ids of sandboxes still exiting.")
    cgroup_root: str = _key("", "Delegated cgroup v2 folder for per-call memory/pids/cpu limits (systemd `Delegate=yes`); empty: the daemon's own cgroup if usable, else off (logged at start); `off`: never.")
    max_request_bytes: int = _key(64 * MiB, "Largest request or response message on the socket (1 MiB to 256 MiB).")
    max_held_request_bytes: int = _key(256 * MiB, "Requests the daemon holds at once, queued and running together, by their size on the socket; a call that would pass it is refused at once (`RESOURCE_EXHAUSTED`), since the daemon keeps a few copies of each. At least `max_request_bytes`.")
    shutdown_grace: float = _key(10.0, "Seconds in-flight calls get to finish on SIGTERM before they are killed.")
    start_timeout: float = _key(60.0, "Seconds the sandbox zygote may take to start (it imports the plugins and operator types) before the daemon gives up, naming the one it was importing.")
    metrics_address: str = _key("", "`host:port` of the Prometheus endpoint (`/metrics`, plain HTTP; `[::1]:9464` for IPv6, port 0 picks a free one); empty turns it off.")
    log_level: str = _key("info", "debug, info, warning or error. `call` lines (failed and refused calls' too), `denied`, `ready`, `stopping` and `stopped` are info records: at `warning` and `error` the log holds none of them, only the daemon's own troubles (`zygote_died`, `sandbox_lost`, `fatal`, …).")
    insecure_no_isolation: bool = _key(False, "Development only: run guests without kernel isolation (logged loudly, reported in GetCapabilities).")

    @classmethod
    def load(cls, path: str | None = None, overrides: dict | None = None) -> "Config":
        data = {}
        if path:
            try:
                data = tomllib.loads(_read_config_file(path).decode())
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
            except UnicodeDecodeError as e:
                raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text ({e.reason} "
                                  f"at byte {e.start})") from e
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        config = _build(cls, data, "")
        config.validate()
        return config

    def validate(self) -> None:
        def need(ok: bool, key: str, expected: str, value) -> None:
            if not ok:
                raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
        need(self.socket.startswith("/"), "socket", "an absolute path", self.socket)
        # sun_path holds 108 bytes with its NUL; gRPC's own refusal came late and named no key
        need(len(os.fsencode(self.socket)) <= 107, "socket", "a path of at most 107 bytes (a Unix socket's limit)",
             self.socket)
        blocker = _non_folder_above(self.socket)
        need(blocker is None, "socket", f"a path under folders (missing ones are made at start), but {blocker} "
             "is not a folder", self.socket)
        need(0 <= self.socket_mode <= 0o777, "socket_mode", "permission bits (0 to 0o777)", self.socket_mode)
        need(self.max_concurrency >= 1, "max_concurrency", ">= 1", self.max_concurrency)
        need(self.queue_size >= 0, "queue_size", ">= 0", self.queue_size)
        need(self.code_cache_bytes >= 0, "code_cache_bytes", ">= 0", self.code_cache_bytes)
        need(1 <= self.max_connections <= 1_000_000, "max_connections", "from 1 to 1000000", self.max_connections)
        need(self.max_concurrency + self.queue_size < self.max_open_rpcs <= 1_000_000, "max_open_rpcs",
             f"> max_concurrency + queue_size ({self.max_concurrency + self.queue_size}) and <= 1000000",
             self.max_open_rpcs)
        pool_max = max(MAX_POOL_SIZE, self.max_concurrency)
        need(1 <= self.pool_size <= pool_max, "pool_size", f"from 1 to {pool_max} (256, or max_concurrency if "
             "larger: each prepared sandbox holds ~3 MiB and a process)", self.pool_size)
        need(0 < self.default_timeout <= MAX_SECONDS, "default_timeout", f"> 0 and <= {MAX_SECONDS:g}", self.default_timeout)
        need(self.default_timeout <= self.max_timeout <= MAX_SECONDS, "max_timeout",
             f">= default_timeout ({self.default_timeout}) and <= {MAX_SECONDS:g}", self.max_timeout)
        need(self.sandbox_uid_base > 0, "sandbox_uid_base", "> 0 (never root)", self.sandbox_uid_base)
        need(self.sandbox_uid_base + self.sandbox_uid_count - 1 <= MAX_ID, "sandbox_uid_count",
             f"small enough that sandbox_uid_base + sandbox_uid_count - 1 <= {MAX_ID} (the largest uid)",
             self.sandbox_uid_count)
        need(self.sandbox_uid_count >= self.max_concurrency + self.pool_size + 1, "sandbox_uid_count",
             f">= max_concurrency + pool_size + 1 ({self.max_concurrency + self.pool_size + 1})", self.sandbox_uid_count)
        need(1 * MiB <= self.max_request_bytes <= MAX_MESSAGE_BYTES, "max_request_bytes",
             f">= 1 MiB and <= {MAX_MESSAGE_BYTES // MiB} MiB", self.max_request_bytes)
        need(self.max_held_request_bytes >= self.max_request_bytes, "max_held_request_bytes",
             f">= max_request_bytes ({self.max_request_bytes})", self.max_held_request_bytes)
        need(0 <= self.shutdown_grace <= MAX_SECONDS, "shutdown_grace", f">= 0 and <= {MAX_SECONDS:g}", self.shutdown_grace)
        need(0 < self.start_timeout <= MAX_SECONDS, "start_timeout", f"> 0 and <= {MAX_SECONDS:g}", self.start_timeout)
        need(self.log_level in LOG_LEVELS, "log_level", ", ".join(LOG_LEVELS[:-1]) + " or " + LOG_LEVELS[-1], self.log_level)
        for f in fields(LimitsConfig):
            value = getattr(self.limits, f.name)
            if f.name == "cpu_seconds":
                need(0 <= value <= MAX_SECONDS, "limits.cpu_seconds", f">= 0 and <= {MAX_SECONDS:g}", value)
            else:
                need(value >= MIN_LIMITS.get(f.name, 1), f"limits.{f.name}", f">= {MIN_LIMITS.get(f.name, 1)}", value)
                ceiling, why = limit_ceiling(f.name)
                need(value <= ceiling, f"limits.{f.name}", f"<= {ceiling} ({why})", value)
        # A unary Run answers the result and the console lines in one message, which grpc
        # refuses past max_request_bytes: the client got RESOURCE_EXHAUSTED for a call the
        # daemon had logged as ok.
        # output_bytes first: when it alone leaves no room, result_bytes is not what to lower.
        need(self.limits.output_bytes < self.max_request_bytes - ANSWER_FRAMING, "limits.output_bytes",
             f"< max_request_bytes - 64 KiB ({self.max_request_bytes - ANSWER_FRAMING}): result_bytes (at "
             "least 1) must fit beside it in one answer", self.limits.output_bytes)
        room = self.max_request_bytes - self.limits.output_bytes - ANSWER_FRAMING
        need(self.limits.result_bytes <= room, "limits.result_bytes",
             f"<= max_request_bytes - limits.output_bytes - 64 KiB ({room}): the result and the console "
             "lines travel in one answer", self.limits.result_bytes)
        for group in ("compilers", "resolvers", "args_resolvers"):
            for name, target in getattr(self.plugins, group).items():
                # a request's empty plugin name means "none", so no call could name this one
                need(name != "", f"plugins.{group}", "a table of plugins with non-empty names", name)
                need(isinstance(target, str) and ":" in target, f"plugins.{group}.{name}", '"module:attribute"', target)
        for name in self.default_external:
            need(isinstance(name, str) and name.isidentifier() and not runtime_module(name), "default_external",
                 "a list of top-level module names (each allows its submodules), none of the runtime's own "
                 f"({', '.join(RUNTIME_MODULES)})", name)
        for path in self.plugin_paths:
            need(isinstance(path, str) and path.startswith("/"), "plugin_paths", "a list of absolute folder paths", path)
        # The codec's own rule (docs/values.md §5): the zygote's registry refused these only
        # at start, after --print-config had passed them.
        from isorun._wire import _NAME as TYPE_NAME, BUILTIN_NAMES  # here: only validation needs the codec
        for name, target in self.types.items():
            need(TYPE_NAME.fullmatch(name) is not None, "types", "a table whose names are 1-200 letters, "
                 "digits, '_', '.' or '-', starting with a letter or '_'", name)
            need(name not in BUILTIN_NAMES, "types", f"a table of names other than the {len(BUILTIN_NAMES)} built-in ones ({name!r} "
                 f"is built in: use a qualified name, such as 'acme.{name}')", name)
            need(isinstance(target, str) and ":" in target, f"types.{name}", '"module:attribute"', target)
        if self.metrics_address:
            need(metrics_endpoint(self.metrics_address) is not None, "metrics_address",
                 '"host:port" with a port from 0 (any free one, logged) to 65535, e.g. "127.0.0.1:9464"', self.metrics_address)
        if self.socket_group:
            need(resolve_id(self.socket_group, grp.getgrnam) is not None, "socket_group",
                 "an existing group name or a group number", self.socket_group)
        for key, lookup in (("allowed_uids", pwd.getpwnam), ("allowed_gids", grp.getgrnam)):
            for value in getattr(self, key):
                need(resolve_id(value, lookup) is not None, key,
                     f"a list of {'user' if key == 'allowed_uids' else 'group'} numbers (>= 0) or existing names", value)

    def access_ids(self) -> tuple[frozenset, frozenset]:
        """The allowlist as numbers: (uids, gids); both empty means no allowlist."""
        return (frozenset(resolve_id(v, pwd.getpwnam) for v in self.allowed_uids),
                frozenset(resolve_id(v, grp.getgrnam) for v in self.allowed_gids))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The effective configuration as TOML that ``Config.load`` reads back unchanged."""
        return _toml_table(self.to_dict(), "")


def limit_ceiling(name: str) -> tuple[int, str]:
    """The largest value ``[limits]`` key ``name`` may take on this host, and why it is there.

    A value past it passed this check and then failed the start: in the request's protobuf
    field (``Limits`` in runner.proto: "Value out of range"), in Python's setrlimit, or in the
    sandbox's setrlimit, which the daemon then reported as the host's fault."""
    if name == "max_processes":
        ceiling, why = PID_MAX_LIMIT, "the kernel's most tasks, and the most a cgroup's pids.max takes"
    elif name == "max_open_files":
        ceiling, why = _nr_open(), "the kernel's most open files of a process, /proc/sys/fs/nr_open"
    elif name in ("output_bytes", "result_bytes"):
        ceiling, why = MAX_MESSAGE_BYTES, "the largest message; it travels in the call's answer"
    elif name == "tmp_bytes":
        ceiling, why = RLIM_MAX, "2^63 - 1: memory_bytes + tmp_bytes is the call's cgroup memory.max, 64 bits"
    else:
        ceiling, why = RLIM_MAX, "2^63 - 1, the largest rlimit a sandbox can set"
    if name in RLIMIT_OF:
        # Raising a hard rlimit takes CAP_SYS_RESOURCE of the host's user namespace, which no
        # sandbox has: each inherits the daemon's (systemd's Limit*=, the shell's ulimit -H).
        hard = resource.getrlimit(getattr(resource, RLIMIT_OF[name]))[1]
        if hard != resource.RLIM_INFINITY and hard < ceiling:
            ceiling, why = hard, f"the daemon's own hard {RLIMIT_OF[name]}, which its sandboxes inherit and cannot raise"
    return ceiling, why


def _non_folder_above(path: str) -> str | None:
    """The first existing component above socket ``path`` that is not a folder, or None. The
    daemon makes the missing folders at start, where a file in the way failed with a bare
    NotADirectoryError that named no key."""
    parts = os.path.dirname(path).split("/")
    for i in range(2, len(parts) + 1):
        above = "/".join(parts[:i])
        try:
            if not stat.S_ISDIR(os.stat(above).st_mode):
                return above
        except OSError:  # missing (made at start) or not for us to look into: the start will say
            return None
    return None


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def _read_config_file(path: str) -> bytes:
    """The bytes of config file ``path``, which must be a regular file of at most
    ``MAX_CONFIG_FILE_BYTES``. A named pipe with no writer held the start in open() and read(),
    where SIGTERM could not end it, and /dev/zero grew the daemon by gigabytes: the file is
    opened without blocking, refused unless it is a regular file, and read no further than the
    cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"config file {path} is not a regular file (a named pipe, a device or a folder "
                              "cannot be a config file)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_FILE_BYTES // MiB} MiB, "
                          "the most a config file may be")
    return data


def resolve_id(value, lookup) -> int | None:
    """A uid/gid given as a number or a name (``lookup`` is pwd.getpwnam or grp.getgrnam)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    try:
        entry = lookup(value)
    except (KeyError, TypeError):
        return None
    return entry.pw_uid if hasattr(entry, "pw_uid") else entry.gr_gid


def metrics_endpoint(address: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:9464`` for IPv6) as (host, port), or None when malformed."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return None
    return host, int(port)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_table(table: dict, prefix: str) -> str:
    """Scalars and lists first, then one ``[section]`` per nested table, as TOML requires."""
    lines, sections = [], []
    for key, value in table.items():
        name = key if _BARE_KEY.match(key) else json.dumps(key)
        if isinstance(value, dict):
            sections.append(_toml_table(value, f"{prefix}{name}."))
        else:
            lines.append(f"{name} = {_toml_value(key, value)}")
    out = ""
    if prefix and (lines or not sections):
        out += f"\n[{prefix.rstrip('.')}]\n"
    out += "".join(line + "\n" for line in lines)
    return out + "".join(sections)


def _toml_value(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == "socket_mode":
        return f"0o{value:o}"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value("", v) for v in value) + "]"
    return json.dumps(value)  # ints, and strings: JSON's escapes are valid in TOML basic strings


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys: {', '.join(sorted(known))})")
    values = {}
    for name, value in data.items():
        f = known[name]
        if name in _NESTED:
            values[name] = _build(_NESTED[name], value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(f, value, prefix + name)
    return cls(**values)


_NESTED = {"plugins": PluginsConfig, "limits": LimitsConfig}


def _coerce(f, value, key: str):
    kind = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}[f.type]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key '{key}' must be {'a' if kind is not int else 'an'} {kind.__name__}, got {value!r}")
    if kind is list and not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"config key '{key}' must be a list of strings or numbers, got {value!r}")
    return value


def reference() -> str:
    """The configuration reference as a Markdown table, generated from the defaults above."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for cls, prefix in ((Config, ""), (LimitsConfig, "limits."), (PluginsConfig, "plugins.")):
        for f in fields(cls):
            if f.name in _NESTED and cls is Config:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name == "socket":
                default = "see meaning"
            elif f.name == "default_external":
                default = f"{', '.join(default[:4])}, … ({len(default)} modules)"
            else:
                default = _toml_value(f.name, default)
            doc = f.metadata["doc"].replace("|", "\\|")  # a bare | would end the table cell
            rows.append(f"| `{prefix}{f.name}` | `{default}` | {doc} |")
    return "\n".join(rows) + "\n"
