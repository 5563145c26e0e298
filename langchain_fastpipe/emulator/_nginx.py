"""NginxProxy: a private nginx (TLS, HTTP/2) in front of an upstream, for tests and benchmarks.

Real HTTP/2 servers close connections gracefully: nginx sends GOAWAY after
``keepalive_requests`` requests per connection and on every reload (SIGHUP, what
``nginx -s reload`` sends), then completes the streams it accepted (RFC 9113 section 6.8;
h2 mishandles it, python-hyper/h2#1181). The
emulator's hypercorn behaves differently, so the GOAWAY handling of the transport is
tested behind this proxy too.

Everything nginx writes lives in a temporary directory of its own (configuration, pid
file, error log, temp paths, a trustme certificate); the master process runs in the
foreground (``daemon off``) as a child of this process, with one worker. nginx cannot
bind port 0, so a free port is picked and another one tried when the bind fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from langchain_fastpipe.errors import ConfigError

__all__ = ["NginxProxy", "find_nginx"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_BIND_ATTEMPTS = 5


def find_nginx() -> str | None:
    """The nginx binary: on PATH, else Debian's ``/usr/sbin/nginx``; None when missing."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _nginx_version(binary: str) -> tuple[int, ...]:
    """The version of ``binary`` (``nginx -v`` writes ``nginx version: nginx/1.22.1``)."""
    out = subprocess.run(  # noqa: S603 - a fixed binary and argument
        [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", out.stderr + out.stdout)
    if match is None:
        raise ConfigError(f"cannot read the version of {binary}: {out.stderr.strip()!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NginxProxy:
    """nginx terminating TLS (HTTP/2 by ALPN) and proxying to ``upstream`` over HTTP/1.1.

    Responses are not buffered (``proxy_buffering off``), so SSE and NDJSON streams
    pass through as the upstream writes them. Use as a context manager.

    Args:
        upstream: ``http://host:port`` of the upstream server (e.g. an EmulatorServer).
        keepalive_requests: Requests per client connection before nginx sends GOAWAY
            (HTTP/2) or closes (HTTP/1.1); nginx's default is 1000.
        http2: Offer HTTP/2 in ALPN.
        host: Interface to listen on.
        binary: The nginx binary (default: :func:`find_nginx`).

    Attributes:
        port: The port nginx listens on (after start).
        reloads: Reloads sent so far.

    Example:
        >>> with EmulatorServer() as emu, NginxProxy(emu.base_url) as proxy:  # doctest: +SKIP
        ...     httpx.get(proxy.base_url + "/health", verify=proxy.ca_path)
    """

    def __init__(
        self,
        upstream: str,
        *,
        keepalive_requests: int = 1000,
        http2: bool = True,
        host: str = "127.0.0.1",
        binary: str | None = None,
    ) -> None:
        """Create the proxy (not started)."""
        match = re.fullmatch(r"http://([^/:]+|\[[^\]]+\]):(\d+)/?", upstream)
        if match is None:
            raise ConfigError(f"NginxProxy: upstream must be http://host:port, got {upstream!r}")
        if keepalive_requests < 1:
            raise ConfigError(
                f"NginxProxy: keepalive_requests must be >= 1, got {keepalive_requests}"
            )
        self.upstream = f"{match.group(1)}:{match.group(2)}"
        self.keepalive_requests = keepalive_requests
        self.http2 = http2
        self.host = host
        self.binary = binary or find_nginx()
        self.port = 0
        self.reloads = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- addresses

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` (after start)."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_path(self) -> str:
        """PEM file of the CA that signed nginx's certificate (``verify=`` of clients)."""
        return str(self._path("ca.pem"))

    @property
    def pid(self) -> int | None:
        """The master process id while running."""
        return self._proc.pid if self._proc is not None else None

    def error_log(self) -> str:
        """What nginx wrote to its error log so far (for failure messages)."""
        try:
            return self._path("error.log").read_text(errors="replace")
        except OSError:
            return ""

    # ---- lifecycle

    def start(self) -> NginxProxy:
        """Write the configuration and certificate, start nginx and wait until it serves.

        Raises:
            ConfigError: nginx is missing.
            RuntimeError: nginx did not start (its error log is in the message).
        """
        if self._proc is not None:
            return self
        if self.binary is None:
            raise ConfigError("nginx is not installed (Debian: apt-get install nginx)")
        self._dir = tempfile.TemporaryDirectory(prefix="fastpipe-nginx-")
        os.chmod(self._dir.name, 0o711)  # noqa: S103 - workers (user nobody under root) traverse it
        self._write_certificate()
        http2_on = _nginx_version(self.binary) >= (1, 25, 1)
        for attempt in range(_BIND_ATTEMPTS):
            self.port = _free_port(self.host)
            self._path("nginx.conf").write_text(self._config(http2_directive=http2_on))
            self._path("error.log").write_text("")
            if self._launch():
                return self
            if "Address already in use" not in self.error_log() or attempt == _BIND_ATTEMPTS - 1:
                log = self.error_log()
                self.stop()
                raise RuntimeError(f"nginx did not start: {log.strip()[-2000:]}")
        raise AssertionError("unreachable")  # pragma: no cover

    def reload(self) -> None:
        """Reload gracefully (SIGHUP to the master, what ``nginx -s reload`` sends).

        nginx starts new workers and tells the old ones to finish: each old HTTP/2
        connection gets a GOAWAY and is closed once its accepted streams completed.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("nginx is not running")
        self._proc.send_signal(signal.SIGHUP)
        self.reloads += 1

    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop nginx (fast shutdown) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._terminate(proc)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> NginxProxy:
        """Start nginx."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop nginx."""
        self.stop()

    def __repr__(self) -> str:
        """Address and upstream."""
        return f"NginxProxy({self.base_url} -> http://{self.upstream})"

    # ---- internals

    def _path(self, name: str) -> Path:
        if self._dir is None:
            raise RuntimeError("NginxProxy is not started")
        return Path(self._dir.name) / name

    def _write_certificate(self) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(self._path("ca.pem")))
        cert.private_key_pem.write_to_path(str(self._path("server.key")))
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(str(self._path("server.pem")), append=i > 0)

    def _config(self, *, http2_directive: bool) -> str:
        root = self._path("")
        listen = f"listen {self.host}:{self.port} ssl"
        if self.http2 and not http2_directive:
            listen += " http2"  # nginx < 1.25.1
        http2 = f"http2 {'on' if self.http2 else 'off'};" if http2_directive else ""
        return f"""
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 30s;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body_temp;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    scgi_temp_path {root}/scgi_temp;
    upstream fastpipe_upstream {{
        server {self.upstream};
        keepalive 64;
    }}
    server {{
        {listen};
        {http2}
        ssl_certificate {root}/server.pem;
        ssl_certificate_key {root}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests {self.keepalive_requests};
        location / {{
            proxy_pass http://fastpipe_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""

    def _launch(self) -> bool:
        """Start the master; True once it serves, False when it exited (e.g. bind failed)."""
        root = self._path("")
        conf, log = f"{root}/nginx.conf", f"{root}/error.log"
        cmd = [str(self.binary), "-p", f"{root}/", "-c", conf, "-e", log]
        proc = subprocess.Popen(  # noqa: S603 - our binary, our configuration
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        pid_file = self._path("nginx.pid")
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self._serving(pid_file, proc.pid):
                self._proc = proc
                return True
            time.sleep(0.02)
        self._terminate(proc)
        return False

    def _serving(self, pid_file: Path, pid: int) -> bool:
        """Whether our master wrote its pid (it has bound the port) and accepts."""
        try:
            if int(pid_file.read_text().strip() or 0) != pid:
                return False
        except (OSError, ValueError):
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
            return True
        return False

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT)
