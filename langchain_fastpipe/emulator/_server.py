"""EmulatorServer: the emulator's ASGI app served by hypercorn in a background thread.

The thread owns its own event loop, so the server is usable from sync code and from any
number of test event loops. Connections are accepted with ``asyncio.start_server`` and
each is handed to hypercorn's asyncio ``TCPServer`` (the same path as ``hypercorn.asyncio
.serve``); keeping the accept step lets the server count real TCP connections and reset
one on demand (the ``reset`` faults), which ASGI alone cannot do.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import ssl
import struct
import tempfile
import termios
import threading
from types import TracebackType
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from langchain_fastpipe.emulator._app import (
    EmulatorApp,
    EmulatorConfig,
    Fault,
    RecordedRequest,
)
from langchain_fastpipe.errors import ConfigError

__all__ = ["EmulatorServer"]

_log = logging.getLogger("langchain_fastpipe.emulator")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class _Certs:
    """A trustme CA and a server certificate for 127.0.0.1 / localhost, in temp files."""

    def __init__(self) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.dir = tempfile.TemporaryDirectory(prefix="fastpipe-emulator-")
        self.ca_path = os.path.join(self.dir.name, "ca.pem")
        self.cert_path = os.path.join(self.dir.name, "server.pem")
        self.key_path = os.path.join(self.dir.name, "server.key")
        ca.cert_pem.write_to_path(self.ca_path)
        cert.private_key_pem.write_to_path(self.key_path)
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(self.cert_path, append=i > 0)

    def cleanup(self) -> None:
        self.dir.cleanup()


class EmulatorServer:
    """An OpenAI/Ollama emulator listening on 127.0.0.1 (hypercorn in a daemon thread).

    Args:
        config: Model profiles, seed and ``goaway_after``.
        http2: Offer HTTP/2 (ALPN ``h2`` with TLS; h2c prior knowledge is always accepted
            on plain http).
        tls: Serve https with a fresh trustme CA; clients pass ``verify=ca_cert_path``.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (read it from ``port``/``base_url``).

    Example:
        >>> with EmulatorServer() as server:  # doctest: +SKIP
        ...     httpx.post(f"{server.base_url}/v1/chat/completions", json={...})
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        http2: bool = False,
        tls: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Create the server (not started)."""
        if not 0 <= port <= 65535:
            raise ConfigError(f"EmulatorServer: port must be 0..65535, got {port}")
        self.config = config or EmulatorConfig()
        if self.config.goaway_after is not None and self.config.goaway_after < 1:
            raise ConfigError(
                f"EmulatorConfig.goaway_after must be >= 1, got {self.config.goaway_after}"
            )
        self.http2 = http2
        self.tls = tls
        self.host = host
        self._port = port
        self.app = EmulatorApp(self.config)
        self.app.stats_hook = self.stats
        self.app.reset_hook = self._reset_client
        self._certs: _Certs | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._writers: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn_lock = threading.Lock()
        self.connections_opened = 0

    # ---- addresses and counters

    @property
    def port(self) -> int:
        """The bound port (after ``start()``)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:PORT``; OpenAI lives under ``/v1``, Ollama under ``/api``."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``, what OpenAI clients take as base URL."""
        return self.base_url + "/v1"

    @property
    def ca_cert_path(self) -> str | None:
        """PEM file of the CA that signed the server certificate (TLS only)."""
        return self._certs.ca_path if self._certs else None

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting this server's CA (for ``httpx``'s ``verify=``), TLS only."""
        if self._certs is None:
            return None
        return ssl.create_default_context(cafile=self._certs.ca_path)

    @property
    def requests(self) -> int:
        """Requests received (every path)."""
        return self.app.requests

    @property
    def active_requests(self) -> int:
        """Requests in progress."""
        return self.app.active_requests

    @property
    def chat_requests(self) -> int:
        """Requests to the completion paths."""
        return self.app.chat_requests

    @property
    def open_connections(self) -> int:
        """TCP connections currently open."""
        with self._conn_lock:
            return len(self._writers)

    @property
    def loaded_models(self) -> set[str]:
        """Models currently loaded."""
        return self.app.loaded_models

    @property
    def load_counts(self) -> dict[str, int]:
        """Cold loads performed, by model."""
        return dict(self.app.load_counts)

    # ---- control

    def inject(self, fault: Fault, *, times: int = 1, model: str | None = None) -> None:
        """Play ``fault`` on the next ``times`` completion requests (of ``model`` if given)."""
        self.app.inject(fault, times=times, model=model)

    def clear_faults(self) -> None:
        """Drop faults not yet played."""
        self.app.clear_faults()

    def unload(self, model: str | None = None) -> None:
        """Unload ``model`` (or all) so the next request pays the cold start again."""
        self.app.unload(model)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """JSON bodies of recent requests to ``path`` (e.g. ``"/api/chat"``), oldest first."""
        return self.app.bodies(path)

    def recorded(self, path: str) -> list[RecordedRequest]:
        """Recent requests to ``path`` with their (redacted) headers."""
        return self.app.recorded(path)

    def reset_state(self) -> None:
        """Clear faults and recorded requests (kept: counters and loaded models)."""
        self.app.reset_state()

    def stats(self) -> dict[str, Any]:
        """Counters as a JSON-serializable dict."""
        return {
            "base_url": self.base_url,
            "connections_opened": self.connections_opened,
            "open_connections": self.open_connections,
            "requests": self.requests,
            "active_requests": self.active_requests,
            "chat_requests": self.chat_requests,
            "loaded_models": sorted(self.loaded_models),
            "load_counts": self.load_counts,
            "disconnects": self.app.disconnects,
        }

    # ---- lifecycle

    def start(self) -> EmulatorServer:
        """Bind, start serving in a daemon thread and wait until it listens."""
        if self._thread is not None:
            return self
        sock = self._bind()
        self._port = sock.getsockname()[1]
        if self.tls:
            self._certs = _Certs()
        self._started.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"fastpipe-emulator-{self._port}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise RuntimeError(f"emulator failed to start on {self.base_url}: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving: close the listener, abort open connections, join the thread."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        thread.join(_STOP_TIMEOUT)
        self._thread = None
        self._loop = None
        if self._certs is not None:
            self._certs.cleanup()
            self._certs = None

    def __enter__(self) -> EmulatorServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    async def __aenter__(self) -> EmulatorServer:
        """Start the server (without blocking the caller's loop)."""
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (without blocking the caller's loop)."""
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        """Address and protocol, e.g. ``EmulatorServer(http://127.0.0.1:5000, h2=False)``."""
        return f"EmulatorServer({self.base_url}, http2={self.http2}, tls={self.tls})"

    # ---- internals

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"emulator cannot bind {self.host}:{self._port}: {exc}") from exc
        return sock

    def _hypercorn_config(self) -> Config:
        config = Config()
        config.keep_alive_timeout = 75.0
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = _log
        # h1: "Connection: close" on the Nth response. h2: the GOAWAY is sent when request
        # N+1 arrives; that stream is not answered (hypercorn closes the h2 state), so
        # clients must resend it on a new connection (python-hyper/h2#1181). None: never.
        config.keep_alive_max_requests = self.config.goaway_after or 2**62
        if self._certs is not None:
            config.certfile = self._certs.cert_path
            config.keyfile = self._certs.key_path
            config.alpn_protocols = ["h2", "http/1.1"] if self.http2 else ["http/1.1"]
        return config

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException as exc:
            self._error = exc
            self._started.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        config = self._hypercorn_config()
        ssl_context = config.create_ssl_context() if config.ssl_enabled else None
        context = WorkerContext(None)
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        state: dict[str, Any] = {}

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            peer = writer.get_extra_info("peername")
            key = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
            raw: Any = writer.get_extra_info("socket")
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._conn_lock:
                self.connections_opened += 1
                self._writers[key] = writer
            if task is not None:
                self._tasks.add(task)
            try:
                await TCPServer(app, loop, config, context, state, reader, writer)
            except asyncio.CancelledError:  # stop(): the connection was aborted
                pass
            finally:
                with self._conn_lock:
                    self._writers.pop(key, None)
                if task is not None:
                    self._tasks.discard(task)

        server = await asyncio.start_server(
            on_connect, sock=sock, ssl=ssl_context, backlog=1024,
            ssl_handshake_timeout=config.ssl_handshake_timeout if ssl_context else None,
        )  # fmt: skip
        self._started.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown(server, context)

    async def _shutdown(self, server: asyncio.Server, context: WorkerContext) -> None:
        await context.terminated.set()
        server.close()
        with self._conn_lock:
            writers = list(self._writers.values())
        for writer in writers:
            _abort(writer)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=0.1)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)

    async def _reset_client(self, client: tuple[str, int] | None) -> bool:
        """Reset (RST) the TCP connection of ``client`` after flushing what was sent."""
        if client is None:
            return False
        with self._conn_lock:
            writer = self._writers.get((str(client[0]), int(client[1])))
        if writer is None:
            return False
        # Let bytes the app already sent reach the client before the RST (h2 writes from
        # another task; TLS buffers twice; the kernel drops unsent data on RST).
        for _ in range(400):
            await asyncio.sleep(0.0025)
            if _unsent_bytes(writer) == 0:
                break
        _abort(writer)
        return True


def _unsent_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes written to ``writer`` that the peer has not acknowledged yet (best effort)."""
    transport: Any = writer.transport
    total = int(transport.get_write_buffer_size())
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if inner is not None:
        total += int(inner.get_write_buffer_size())
    sock: Any = writer.get_extra_info("socket")
    if sock is not None and hasattr(termios, "TIOCOUTQ"):
        buf = array.array("i", [0])
        with contextlib.suppress(OSError, ValueError):
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)  # = SIOCOUTQ on Linux
            total += buf[0]
    return total


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
