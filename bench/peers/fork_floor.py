"""The floors: what one fresh process per call costs before any sandbox work.

A warm Python process (like isorun's zygote) that answers each call from a process forked for
it. Two modes:

- ``ns``: fork; the child unshares user, mount, pid, network, ipc and uts namespaces (no uid map,
  no mounts: the cheapest version of isorun's first step), then forks again, because a process
  that unshared a pid namespace stays outside it and only its next child becomes pid 1 there.
  That grandchild runs the function and writes the result on a pipe.
- ``plain``: fork; the child runs the function and writes the result on a pipe.

The harness drives it over stdin/stdout with the same line protocol as the vm2 peer:

    request   {"id": 7, "fn": "echo", "args": [[7, "hi"]]}
    response  {"id": 7, "ok": true, "result": [7, "hi"]}   or   {"id": 7, "ok": false, "error": "..."}

The first line is {"ready": true} after one probe call succeeded, or {"ready": false, "error":
...}. Calls are served concurrently: the process never blocks on one child, a selector watches
stdin and every child's pipe. It exits when stdin closes and every call has been answered.

The process is single-threaded on purpose: forking a threaded process is unsafe, which is why
isorun forks from a zygote and never from its gRPC server.

usage: python fork_floor.py --mode ns|plain
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

_libc = ctypes.CDLL(None, use_errno=True)


def echo(x):
    return x


FUNCTIONS = {"echo": echo}


# ---- child side ------------------------------------------------------------------------------

def child_run_call(fn: str, args: list, out_fd: int) -> int:
    """Runs the function and writes one JSON reply body on ``out_fd``; returns an exit status."""
    try:
        body = {"ok": True, "result": FUNCTIONS[fn](*args)}
        status = 0
    except Exception as exc:  # the reply carries it; a floor has no other way to report
        body = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        status = 1
    data = json.dumps(body, separators=(",", ":")).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view):]
    return status


def child_unshare_then_run(fn: str, args: list, out_fd: int) -> int:
    """Enters fresh namespaces, forks into the new pid namespace, waits for that grandchild."""
    if _libc.unshare(NAMESPACES) != 0:
        err = ctypes.get_errno()
        os.write(out_fd, json.dumps(
            {"ok": False, "error": f"unshare(0x{NAMESPACES:x}): {os.strerror(err)}"}).encode())
        return 1
    pid = os.fork()
    if pid == 0:  # grandchild: pid 1 of the new pid namespace
        os._exit(child_run_call(fn, args, out_fd))
    os.close(out_fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) & 0xFF


# ---- parent side -----------------------------------------------------------------------------

class FloorServer:
    """Reads requests, forks one child per call, relays each child's reply with its id."""

    def __init__(self, mode: str):
        self.child_main = child_unshare_then_run if mode == "ns" else child_run_call
        self.sel = selectors.DefaultSelector()
        self.pending: dict[int, tuple[int, int, bytearray]] = {}  # pipe fd -> (id, pid, data)
        self.inbuf = bytearray()
        self.stdin_open = True

    def start_call(self, req_id: int, fn: str, args: list) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            status = 1
            try:
                status = self.child_main(fn, args, w)
            finally:
                os._exit(status)  # never run the parent's cleanup or flush its buffers
        os.close(w)
        self.pending[r] = (req_id, pid, bytearray())
        self.sel.register(r, selectors.EVENT_READ, "child")

    def finish_call(self, fd: int) -> None:
        req_id, pid, data = self.pending.pop(fd)
        self.sel.unregister(fd)
        os.close(fd)
        os.waitpid(pid, 0)
        body = bytes(data) if data else b'{"ok":false,"error":"child wrote nothing"}'
        self.send(b'{"id":%d,' % req_id + body[1:])

    def send(self, line: bytes) -> None:
        view = memoryview(line + b"\n")
        while view:
            view = view[os.write(1, view):]

    def read_requests(self) -> None:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            self.stdin_open = False
            self.sel.unregister(0)
            return
        self.inbuf += chunk
        while (nl := self.inbuf.find(b"\n")) >= 0:
            line, self.inbuf = bytes(self.inbuf[:nl]), self.inbuf[nl + 1:]
            if line.strip():
                req = json.loads(line)
                self.start_call(int(req["id"]), req["fn"], req.get("args", []))

    def probe(self) -> str | None:
        """Runs one call before announcing readiness; returns its error, if any."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os._exit(self.child_main("echo", [0], w))
        os.close(w)
        with os.fdopen(r, "rb") as f:
            body = json.loads(f.read() or b'{"ok":false,"error":"probe wrote nothing"}')
        os.waitpid(pid, 0)
        return None if body.get("ok") else body.get("error", "probe failed")

    def serve(self) -> None:
        error = self.probe()
        self.send(json.dumps({"ready": error is None, "error": error}).encode())
        if error is not None:
            return
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        while self.stdin_open or self.pending:
            for key, _ in self.sel.select():
                if key.data == "stdin":
                    self.read_requests()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    self.pending[key.fd][2].extend(chunk)
                else:
                    self.finish_call(key.fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ns", "plain"], required=True)
    mode = parser.parse_args().mode
    sys.stdout.flush()
    FloorServer(mode).serve()


if __name__ == "__main__":
    main()
