"""Workloads: 1 MB crossing the boundary, as an argument and as a result."""


def size(data):
    return len(data)


def make(n):
    return b"\xab" * n
