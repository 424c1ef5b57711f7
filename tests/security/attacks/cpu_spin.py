# Attack: spin on the CPU forever (with SIGXCPU ignored, so the soft limit's warning is not
# enough), to keep a core for as long as the call exists.
from escape import real_import


def attack():
    while True:
        pass


def attack_ignoring_sigxcpu():
    signal = real_import("signal")
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    while True:
        pass


def attack_exiting_on_sigxcpu():
    signal, os = real_import("signal"), real_import("os")
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(1))
    while True:
        pass


class _Endless(Exception):
    def __str__(self):
        while True:
            pass


def attack_in_its_exceptions_str():
    raise _Endless()
