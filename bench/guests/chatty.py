"""Workload: console output, one line per print, streamed to the caller's on_console."""


def chatty(n):
    for i in range(n):
        print("line", i)
    return n
