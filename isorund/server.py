"""The gRPC face of the daemon and its lifecycle.

``Server.serve()`` is the life of the process, top to bottom: start the zygote → prove a
sandbox can be built → start gRPC → notify READY → wait for SIGTERM/SIGINT → health
NOT_SERVING → notify STOPPING → let in-flight calls finish within the grace period → kill
what is left → remove the socket. The servicer only translates between protobuf and
``Calls``, and maps errors to status codes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import tempfile

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc

from . import __version__, systemd
from .admission import QueueFull
from .calls import Calls
from .launcher import Zygote, ZygoteUnavailable
from .plan import RequestError

log = logging.getLogger("isorund")
SERVICE = pb.DESCRIPTOR.services_by_name["Runner"].full_name
PROBE = "def probe(x):\n    return x\n"


class RunnerServicer(runner_pb2_grpc.RunnerServicer):
    def __init__(self, server: "Server"):
        self.server = server

    async def Run(self, request, context):
        console = []

        async def collect(event):
            if event.WhichOneof("event") == "console":
                console.append(event.console)
        outcome = await self._run(request, context, collect)
        return pb.RunResponse(outcome=outcome, console=console)

    async def RunStream(self, request, context):
        outcome = await self._run(request, context, context.write)
        await context.write(pb.RunEvent(outcome=outcome))

    async def GetCapabilities(self, request, context):
        return self.server.capabilities()

    async def _run(self, request, context, on_event):
        if self.server.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "isorund is shutting down")
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        try:
            return await self.server.calls.run(request, on_event, deadline=_monotonic(deadline), peer=context.peer())
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except QueueFull as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while it was queued")
        except ZygoteUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))


def _monotonic(loop_time: float | None) -> float | None:
    # asyncio's clock is time.monotonic on Linux; kept as one function should that change.
    return loop_time


class Server:
    def __init__(self, config):
        self.config = config
        self.isolated = not config.insecure_no_isolation
        self.stopping = False
        self.state_dir = ""
        self.zygote: Zygote | None = None
        self.calls: Calls | None = None
        self.grpc: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.metrics = None

    async def serve(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.startup()
        except Exception:
            await self.cleanup()
            raise
        systemd.notify("READY=1", f"STATUS=serving on {self.config.socket}")
        log.info(json.dumps({"event": "ready", "socket": self.config.socket, "isolation": self.isolation_name(),
                             "version": __version__}))
        await stop.wait()
        await self.shutdown()
        return 0

    async def startup(self) -> None:
        if not self.isolated:
            log.warning(json.dumps({"event": "insecure", "warning":
                "running WITHOUT kernel isolation (--insecure-no-isolation): guests can reach this host"}))
        elif os.geteuid() != 0:
            raise SystemExit("isorund needs root to build sandboxes (namespaces, mounts, per-call uids); "
                             "run it as root (systemd does) or, for development only, with --insecure-no-isolation")
        self.state_dir = tempfile.mkdtemp(prefix="isorund-")
        os.mkdir(os.path.join(self.state_dir, "root"))
        self.zygote = Zygote(self.config, os.path.join(self.state_dir, "root"), on_restart=self._on_zygote_restart)
        self.zygote.on_down = self._on_zygote_down
        await self.zygote.start()
        self.calls = Calls(self.config, self.zygote, self.metrics)
        await self._probe()
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.config.max_request_bytes),
            ("grpc.max_send_message_length", self.config.max_request_bytes),
        ])
        runner_pb2_grpc.add_RunnerServicer_to_server(RunnerServicer(self), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.grpc)
        _claim_socket(self.config.socket)
        self.grpc.add_insecure_port("unix:" + self.config.socket)
        await self.grpc.start()
        os.chmod(self.config.socket, self.config.socket_mode)
        await self._set_health(True)

    async def _probe(self) -> None:
        """Runs one real call through a real sandbox: if the kernel refuses any step, the
        daemon must not start (fail closed), and the message says which step."""
        folder = os.path.join(self.state_dir, "probe")
        os.mkdir(folder, 0o755)
        with open(os.path.join(folder, "probe.py"), "w") as f:
            f.write(PROBE)
        os.chmod(os.path.join(folder, "probe.py"), 0o644)
        request = pb.RunRequest(root=folder, file="probe.py", func_name="probe", args=[_codec.encode(7)])

        async def ignore(event):
            pass
        outcome = await self.calls.run(request, ignore, deadline=None, peer="self-test")
        if outcome.WhichOneof("result") != "value" or _codec.decode(outcome.value) != 7:
            raise SystemExit(f"isorund cannot build a sandbox on this host: {outcome.failure.message}")

    async def shutdown(self) -> None:
        self.stopping = True
        await self._set_health(False)
        systemd.notify("STOPPING=1")
        log.info(json.dumps({"event": "stopping", "grace_seconds": self.config.shutdown_grace}))
        if self.grpc is not None:
            await self.grpc.stop(self.config.shutdown_grace)
        await self.cleanup()
        log.info(json.dumps({"event": "stopped"}))

    async def cleanup(self) -> None:
        if self.zygote is not None:
            await self.zygote.stop()
        if self.grpc is not None and os.path.exists(self.config.socket):
            os.unlink(self.config.socket)
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    def _on_zygote_restart(self) -> None:
        if not self.stopping:
            asyncio.get_running_loop().create_task(self._set_health(True))

    def _on_zygote_down(self) -> None:
        asyncio.get_running_loop().create_task(self._set_health(False))

    def isolation_name(self) -> str:
        return "kernel" if self.isolated else "none (insecure)"

    def capabilities(self) -> pb.Capabilities:
        c = self.config
        limits = pb.Limits(**{f.name: getattr(c.limits, f.name) for f in pb.Limits.DESCRIPTOR.fields})
        return pb.Capabilities(
            version=__version__,
            isolation=pb.Capabilities.KERNEL if self.isolated else pb.Capabilities.NONE,
            type_names=sorted(_codec.BUILTIN_NAMES | set(c.types)),
            compilers=sorted(c.plugins.compilers), resolvers=sorted(c.plugins.resolvers),
            args_resolvers=sorted(c.plugins.args_resolvers), limits=limits,
            default_timeout_seconds=c.default_timeout, max_timeout_seconds=c.max_timeout,
            default_external=sorted(c.default_external), max_concurrency=c.max_concurrency)


def _claim_socket(path: str) -> None:
    """Removes a stale socket left by a crashed daemon; refuses to steal a live one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit(f"another isorund is already serving on {path}")
