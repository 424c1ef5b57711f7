"""Prometheus metrics: what a dashboard or an alert needs to see the daemon working.

Counters and histograms are updated as calls end; the gauges (queue depth, live sandboxes,
zygote state) are read from the daemon's own state at scrape time, so they cannot drift from
it. The registry is the daemon's own, not prometheus_client's global one. The HTTP endpoint
is off unless ``metrics_address`` is set. It may face a network (Prometheus scrapes from
elsewhere), so it serves at most ``MAX_SCRAPES`` connections at once, each a thread that only
reads counters and a few integers, and cuts a connection that has not sent its request and read
its answer within ``SCRAPE_TIMEOUT`` in all: whoever opens connections and sends nothing, or a
byte now and then, cannot pile up threads in the daemon, and holds the endpoint for seconds at
most.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import metrics_endpoint

log = logging.getLogger("isorund")

# From a warm call (~2 ms) to the longest timeout a call may ask for.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_SCRAPES = 4        # connections served at once; one more is closed as it comes
SCRAPE_TIMEOUT = 5.0   # seconds a connection may take, its request and its answer together


class Metrics:
    def __init__(self):
        # only the series the documentation lists: no `*_created` timestamp beside each counter
        # and histogram (a process-wide setting of the library; the daemon is its only user)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter("isorun_calls", "Calls answered, by outcome (ok, a failure kind, or why "
                             "the call was refused)", ["outcome"], registry=self.registry)
        self.latency = Histogram("isorun_call_duration_seconds", "Time from receiving a call to "
                                 "answering it, queue included", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("isorun_queue_wait_seconds", "Time a call waited for a sandbox",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self._state = _StateCollector()
        self.registry.register(self._state)
        self._http = None

    def watch(self, calls, zygote) -> None:
        """Lets scrapes read the queue, the running sandboxes and the zygote's state."""
        self._state.calls, self._state.zygote = calls, zygote

    def observe_call(self, outcome: str, seconds: float, queue_seconds: float | None) -> None:
        """One call's end; ``queue_seconds`` None for a call refused before the queue."""
        self.calls.labels(outcome).inc()
        self.latency.observe(seconds)
        if queue_seconds is not None:
            self.queue_wait.observe(queue_seconds)

    def serve(self, address: str) -> str:
        """Starts the endpoint; returns the address it listens on (port 0 picks one)."""
        host, port = metrics_endpoint(address)
        try:
            self._http = _bounded_server(host, port, _at_its_path(make_wsgi_app(self.registry)))
        except OSError as e:
            raise SystemExit(f"cannot serve metrics on {address} (config key 'metrics_address'): "
                             f"{e.strerror or e}")
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        bound = f"{address.rpartition(':')[0]}:{self._http.server_port}"
        log.info(json.dumps({"event": "metrics", "address": bound, "path": "/metrics"}))
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most ``MAX_SCRAPES`` of them at once, each cut once its
    ``SCRAPE_TIMEOUT`` is over."""

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # all slots busy: closed now, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        with self._deadlines_lock:
            self._deadlines[request] = time.monotonic() + SCRAPE_TIMEOUT
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._deadlines_lock:
                del self._deadlines[request]
            self._slots.release()

    def service_actions(self):
        """Run by serve_forever between its polls (twice a second). The socket's timeout bounds
        each wait for a byte, not the connection: four peers each sending a byte every three
        seconds held the endpoint for as long as they went on (seen)."""
        super().service_actions()
        now = time.monotonic()
        with self._deadlines_lock:
            overdue = [request for request, deadline in self._deadlines.items() if deadline <= now]
        for request in overdue:
            with contextlib.suppress(OSError):  # closed meanwhile: its thread has ended
                request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address):
        """A peer that went silent or away is its own business: no traceback on the daemon's
        log for it (whoever can connect could fill the log); anything else is a bug, printed."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT  # on the connection's socket: a silent peer is dropped

    def log_message(self, format, *args):
        pass  # a line per scrape on the daemon's log would drown its call lines


def _at_its_path(app):
    """The metrics at ``/metrics`` only; any other path is 404 (the library's app answers every
    path alike, so a mistyped scrape path looked right)."""
    def serve(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"isorund serves its metrics at /metrics\n"]
        return app(environ, start_response)
    return serve


def _bounded_server(host: str, port: int, app) -> _BoundedServer:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_Server", (_BoundedServer,), {"address_family": family})
    return make_server(host, port, app, server_class, handler_class=_QuietHandler)


class _StateCollector:
    """Gauges and the restart counter, read from the live objects at each scrape."""

    def __init__(self):
        self.calls = None
        self.zygote = None

    def describe(self):
        return []  # values exist only once the daemon runs; nothing to pre-declare

    def collect(self):
        calls, zygote = self.calls, self.zygote
        if calls is None or zygote is None:
            return
        yield _gauge("isorun_queue_depth", "Calls waiting for a sandbox", calls.admission.waiting)
        yield _gauge("isorun_sandboxes_live", "Sandboxes running a call", len(calls.in_flight))
        yield _gauge("isorun_sandboxes_ready", "Sandboxes prepared ahead, waiting for a call", len(zygote.ready))
        yield _gauge("isorun_max_concurrency", "Sandboxes that may run at once", calls.admission.max_concurrency)
        yield _gauge("isorun_zygote_up", "1 while the sandbox zygote is running", int(zygote.alive))
        yield _gauge("isorun_zygote_stalled", "1 while the zygote has delivered no sandbox for "
                     "seconds after a call asked for one", int(zygote.stalled_since is not None))
        cache = calls.code_cache
        yield _gauge("isorun_code_cache_bytes", "Bytes of compiled guest modules the daemon keeps", cache.bytes)
        yield _gauge("isorun_code_cache_modules", "Compiled guest modules the daemon keeps", len(cache))
        for name, help_text, value in (
                ("isorun_zygote_restarts", "Times the sandbox zygote was restarted after dying", zygote.restarts),
                ("isorun_sandboxes_prepared", "Sandboxes the zygote prepared and handed over", zygote.prepared),
                ("isorun_sandboxes_discarded", "Prepared sandboxes killed unused: asked for by calls that "
                 "left before they arrived, with the pool already full", zygote.discarded),
                ("isorun_code_cache_hits", "Compiled guest modules handed to a call", cache.hits),
                ("isorun_code_cache_stored", "Compiled guest modules received from a call's sandbox", cache.stored)):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)
