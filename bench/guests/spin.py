"""Workload: pure CPU; the harness picks n so that one call takes about 100 ms in-process."""


def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
