"""bench/profile/tools.role_paths: which process and which kernel path a perf sample is charged to."""
import importlib.util
from pathlib import Path

# Loaded from its file: the repository's own tools/ folder would shadow a plain `import tools`.
_SPEC = importlib.util.spec_from_file_location(
    "bench_profile_tools", Path(__file__).resolve().parents[2] / "bench" / "profile" / "tools.py")
tools = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tools)

DAEMON, ZYGOTE, CLIENT = 100, 101, 50

# perf script --show-task-events -F comm,pid,tid,ip,sym, as perf prints it: a fork record is
# one line and may come right before a sample, with no blank line between them.
SCRIPT = """\
kthreadd     0/0     PERF_RECORD_FORK(7:7):(2:2)
python 101/101 PERF_RECORD_FORK(200:200):(101:101)
python 101/101 
\tffffffff815e3023 copy_page_range
\tffffffff815e4000 dup_mm
\tffffffff815e5000 copy_process
\t          d4353 _Fork

python 200/200 
\tffffffff815e3023 do_wp_page
\tffffffff821f2786 exc_page_fault
\tffffffff81000c82 asm_exc_page_fault
\t          1950f9 new_keys_object

python 200/200 
\t          1af844 _PyObject_Malloc

python 200/200 PERF_RECORD_FORK(201:201):(200:200)
python 201/201 
\tffffffff81000000 unmap_page_range
\tffffffff81000001 exit_mmap
\tffffffff81000002 do_exit

python 200/200 PERF_RECORD_FORK(200:202):(200:200)
python 200/202 
\tffffffff81000003 setup_net
\tffffffff81000004 ksys_unshare
\tffffffff81000005 do_syscall_64

kworker/0:1 7/7 
\tffffffff81000006 cleanup_net

swapper 0/0 
\tffffffff81000007 default_idle

python 50/50 
\t          1af844 _PyEval_EvalFrameDefault

python 100/104 
\tffffffff81000008 __x64_sys_epoll_wait
\tffffffff81000009 do_syscall_64

python 300/300 
\t          1af844 main
"""


def test_each_sample_is_charged_to_its_role_and_kernel_path():
    shares = dict(tools.role_paths(SCRIPT, DAEMON, ZYGOTE, CLIENT))
    one = 100 / 9  # nine busy samples; the idle one is left out
    expected = {
        ("zygote", "fork: copying the address space"): one,
        ("sandbox", "page faults"): one,
        ("sandbox", "user"): one,
        ("guest child", "exit: unmapping, freeing"): one,
        ("sandbox", "namespaces: unshare, setns"): one,  # a thread of a sandbox is the sandbox
        ("kernel thread", "kernel, other"): one,
        ("client", "user"): one,
        ("daemon", "other syscalls"): one,
        ("other", "user"): one,
    }
    assert shares.keys() == expected.keys()
    for key, share in expected.items():
        assert abs(shares[key] - share) < 1e-9, key


def test_a_sample_right_after_a_fork_record_is_not_lost():
    script = "python 101/101 PERF_RECORD_FORK(200:200):(101:101)\npython 200/200 \n\t 1af844 f\n"
    assert tools.role_paths(script, DAEMON, ZYGOTE, CLIENT) == [(("sandbox", "user"), 100.0)]
