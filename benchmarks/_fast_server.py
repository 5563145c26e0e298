"""A fast OpenAI-compatible and Ollama server for client benchmarks (uvicorn + httptools).

The package's emulator (hypercorn, pure Python) spends more CPU per request than the
clients it measures, so every client looks alike against it. This server does
the least a server can: a raw ASGI app (no framework), reply bytes built once per model and
token count, one ``send`` per token, on uvicorn's httptools HTTP/1.1 parser, one worker,
``uvloop`` when it is installed (asyncio otherwise), no access log, no lifespan. It runs
in its own process (:func:`fast_server`), so the client's ``time.process_time()`` is the
client's alone; ``GET /_cpu`` returns the server process's own CPU seconds, so a benchmark
can tell whether a client was server-bound.

Endpoints:

- ``POST /v1/chat/completions``: ``stream: true`` -> SSE, a role chunk with the headers,
  then ``max_tokens`` (default ``--tokens``) content chunks, each after the inter-token
  delay, a ``finish_reason`` chunk, a usage chunk when ``stream_options.include_usage``,
  and ``data: [DONE]``; otherwise one ``chat.completion`` JSON reply at once (no delay:
  latency then is the clients' and the server's overhead alone).
- ``POST /api/chat``: Ollama's NDJSON stream (``stream`` defaults to true) or one JSON
  object (``"stream": false``).
- ``GET /health``, ``GET /``, ``GET /v1/models``, ``GET /_cpu``.

The inter-token delay is ``--delay-ms`` (default 5); a model name ending in
``@<float>ms`` (``"bench@1ms"``) overrides it for that request, so one server serves
streams of different pacing without any client setting.

Run alone: ``python benchmarks/_fast_server.py --port 8000 [--delay-ms 5] [--tokens 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["FastServer", "fast_server", "make_app"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WORDS = tuple(
    "Pools keep connections warm so that every request after the first one skips the "  # noqa: SIM905
    "handshake and goes straight to the server which answers as fast as it can while the "
    "client reads each token the moment it arrives on the wire".split()
)
MAX_TOKENS = 4096
CREATED = 1_700_000_000

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]
_NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson")]
_JSON = b"application/json"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Reply:
    """Every byte string one reply shape needs, built once per (model, tokens)."""

    head: bytes  # the first body piece (sent with the headers)
    tokens: tuple[bytes, ...]  # one piece per token
    tail: bytes  # finish (+ usage) + end marker
    tail_no_usage: bytes
    whole: bytes  # the non-streamed reply


def _token(i: int) -> str:
    word = WORDS[i % len(WORDS)]
    return word if i == 0 else " " + word


def _openai_reply(model: str, n: int) -> _Reply:
    rid = "chatcmpl-fastserver"
    base = {"id": rid, "object": "chat.completion.chunk", "created": CREATED, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        event = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + _dumps(event) + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
    finish = chunk({}, "stop")
    usage_chunk = b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    done = b"data: [DONE]\n\n"
    text = "".join(_token(i) for i in range(n))
    whole = {
        "id": rid,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    return _Reply(
        head=chunk({"role": "assistant", "content": ""}),
        tokens=tuple(chunk({"content": _token(i)}) for i in range(n)),
        tail=finish + usage_chunk + done,
        tail_no_usage=finish + done,
        whole=_dumps(whole),
    )


def _ollama_reply(model: str, n: int) -> _Reply:
    at = "2026-01-01T00:00:00Z"

    def line(content: str) -> bytes:
        obj = {
            "model": model,
            "created_at": at,
            "message": {"role": "assistant", "content": content},
            "done": False,
        }
        return _dumps(obj) + b"\n"

    stats = {
        "done_reason": "stop",
        "total_duration": 1000,
        "load_duration": 10,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 100,
        "eval_count": n,
        "eval_duration": 900,
    }
    final = {
        "model": model,
        "created_at": at,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        **stats,
    }
    text = "".join(_token(i) for i in range(n))
    whole = {
        "model": model,
        "created_at": at,
        "message": {"role": "assistant", "content": text},
        "done": True,
        **stats,
    }
    last = _dumps(final) + b"\n"
    return _Reply(
        head=b"",
        tokens=tuple(line(_token(i)) for i in range(n)),
        tail=last,
        tail_no_usage=last,
        whole=_dumps(whole),
    )


def _pacing(model: str, default: float) -> float:
    """The inter-token delay: ``model@<ms>ms`` overrides the server's default."""
    at = model.rfind("@")
    if at >= 0 and model.endswith("ms"):
        with contextlib.suppress(ValueError):
            return max(0.0, float(model[at + 1 : -2]) / 1000.0)
    return default


def make_app(*, delay: float = 0.005, tokens: int = 20) -> Callable[..., Awaitable[None]]:
    """The raw ASGI app: ``delay`` seconds between tokens, ``tokens`` by default."""
    cache: dict[tuple[str, str, int], _Reply] = {}

    def reply(kind: str, model: str, n: int) -> _Reply:
        key = (kind, model, n)
        found = cache.get(key)
        if found is None:
            build = _openai_reply if kind == "openai" else _ollama_reply
            found = cache[key] = build(model, n)
        return found

    async def respond(send: Send, status: int, body: bytes, ctype: bytes = _JSON) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def read_body(receive: Receive) -> bytes:
        parts: list[bytes] = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    async def stream(send: Send, r: _Reply, headers: list[tuple[bytes, bytes]], *,
                     pause: float, usage: bool) -> None:  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if r.head:
            await send({"type": "http.response.body", "body": r.head, "more_body": True})
        for piece in r.tokens:
            if pause:
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": r.tail if usage else r.tail_no_usage})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path == "/_cpu":
                await respond(send, 200, _dumps({"cpu": time.process_time(), "pid": os.getpid()}))
            elif path == "/v1/models":
                await respond(send, 200, _dumps({"object": "list", "data": [{"id": "bench"}]}))
            else:
                await respond(send, 200, b'{"status":"ok"}')
            return
        try:
            payload = json.loads(await read_body(receive))
        except ValueError:
            await respond(send, 400, b'{"error":{"message":"body is not JSON"}}')
            return
        model = str(payload.get("model") or "bench")
        pause = _pacing(model, delay)
        if path == "/v1/chat/completions":
            n = payload.get("max_tokens") or payload.get("max_completion_tokens") or tokens
            r = reply("openai", model, max(1, min(int(n), MAX_TOKENS)))
            if not payload.get("stream"):
                await respond(send, 200, r.whole)
                return
            usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            await stream(send, r, _SSE_HEADERS, pause=pause, usage=usage)
        elif path == "/api/chat":
            n = (payload.get("options") or {}).get("num_predict") or tokens
            r = reply("ollama", model, max(1, min(int(n), MAX_TOKENS)))
            if payload.get("stream", True) is False:
                await respond(send, 200, r.whole)
                return
            await stream(send, r, _NDJSON_HEADERS, pause=pause, usage=True)
        else:
            await respond(send, 404, b'{"error":{"message":"not found"}}')

    return app


def loop_name() -> str:
    """``"uvloop"`` when it is installed, else ``"asyncio"``."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def serve(port: int, *, delay: float, tokens: int, host: str = "127.0.0.1") -> None:
    """Run the server in this process until it is terminated (one worker)."""
    import uvicorn

    uvicorn.run(
        make_app(delay=delay, tokens=tokens),
        host=host,
        port=port,
        loop=loop_name(),
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        workers=1,
        backlog=4096,
        timeout_keep_alive=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FastServer:
    """A running :func:`fast_server`: its base URL, process, and CPU counter."""

    base: str
    process: subprocess.Popen[bytes]
    loop: str

    def cpu(self) -> float:
        """The server process's CPU seconds so far (user + system)."""
        try:  # /proc costs the server nothing; GET /_cpu is the portable fallback
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            with urllib.request.urlopen(f"{self.base}/_cpu", timeout=5) as r:  # noqa: S310
                return float(json.loads(r.read())["cpu"])


@contextlib.contextmanager
def fast_server(*, delay_ms: float = 5.0, tokens: int = 20) -> Iterator[FastServer]:
    """Start the server in its own process on a free port; stop it on exit.

    Waits until ``GET /health`` answers (30 s at most).

    Yields:
        The running server (``.base`` is ``http://127.0.0.1:<port>``).
    """
    port = _free_port()
    cmd = [sys.executable, __file__, "--port", str(port), "--delay-ms", str(delay_ms)]
    cmd += ["--tokens", str(tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1):  # noqa: S310
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fast server did not start: {cmd}") from None
                time.sleep(0.05)
        yield FastServer(base, proc, loop_name())
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="between tokens")
    parser.add_argument("--tokens", type=int, default=20, help="when max_tokens is not sent")
    args = parser.parse_args(argv)
    serve(args.port, delay=args.delay_ms / 1000.0, tokens=args.tokens, host=args.host)


if __name__ == "__main__":
    main()
