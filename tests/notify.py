"""A stand-in for systemd's $NOTIFY_SOCKET, for tests of what the daemon tells systemd."""
from __future__ import annotations

import socket
import threading
import time


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; collects assignments."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.address = path
        self.messages: list[dict] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, predicate, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no such notification in {self.messages}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()
