"""Streams lost to HTTP/2 GOAWAY behind a real nginx: raw httpx against ChatFastpipe.

Run: ``python benchmarks/bench_nginx_goaway.py [--quick] [--streams N]``. Needs Debian's
``nginx`` (``make test`` installs it). nginx (TLS, HTTP/2 by ALPN, one worker) proxies to
the emulator, which runs in its own process; ``--concurrency`` streams run at once, in
three set-ups: nginx's default ``keepalive_requests 1000``, ``keepalive_requests 100``,
and graceful reloads (SIGHUP, as ``nginx -s reload``) every ``--reload-every`` finished
streams. Each contender gets a fresh nginx.

Contenders: raw ``httpx.AsyncClient(http2=True)`` (h2 closes its whole connection when a
GOAWAY arrives, so httpcore fails the streams nginx is still completing), and
``ChatFastpipe`` with its defaults (its own HTTP/2 engine ``"h2"``, retries included), with
``max_retries=0`` (only its GOAWAY handling may resend), and with ``engine="httpx"``
(httpx over our graceful HTTP/2 connection). This is the control of
``tests/integration_tests/test_nginx_goaway.py``: raw httpx's losses vary from run to
run, so they are measured here rather than asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from _common import emulator_process, machine, table

from langchain_fastpipe import ChatFastpipe
from langchain_fastpipe.emulator._nginx import NginxProxy, find_nginx
from langchain_fastpipe.transport import get_pool

PROMPT = "Say something about graceful shutdowns."
BODY = {"model": "bench", "messages": [{"role": "user", "content": PROMPT}], "stream": True}

Contender = Callable[[NginxProxy], tuple[Callable[[], Awaitable[str]], Callable[[], Any]]]


def raw_httpx(proxy: NginxProxy) -> tuple[Callable[[], Awaitable[str]], Callable[[], Any]]:
    client = httpx.AsyncClient(http2=True, verify=proxy.ca_path, timeout=60.0)
    url = proxy.base_url + "/v1/chat/completions"

    async def one() -> str:
        async with client.stream("POST", url, json=BODY) as response:
            response.raise_for_status()
            text = []
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    text.append(choices[0].get("delta", {}).get("content") or "")
            return "".join(text)

    async def close() -> dict[str, Any]:
        await client.aclose()
        return {}

    return one, close


def fastpipe(**kwargs: Any) -> Contender:
    def make(proxy: NginxProxy) -> tuple[Callable[[], Awaitable[str]], Callable[[], Any]]:
        model = ChatFastpipe(
            model="bench", base_url=proxy.base_url + "/v1", verify=proxy.ca_path, **kwargs,
        )  # fmt: skip

        async def one() -> str:
            return "".join([chunk.text async for chunk in model.astream(PROMPT)])

        async def close() -> dict[str, Any]:
            pool = get_pool(model.endpoint_config)
            stats = pool.stats()
            await pool.aclose()
            return {"replays": stats["replays"], "retries": stats["retries"] - stats["replays"]}

        return one, close

    return make


async def run(
    upstream: str, make: Contender, *, keepalive: int, reload_every: int | None, args: Any
) -> dict[str, Any]:
    with NginxProxy(upstream, keepalive_requests=keepalive) as proxy:
        one, close = make(proxy)
        gate = asyncio.Semaphore(args.concurrency)
        errors: collections.Counter[str] = collections.Counter()
        texts: collections.Counter[str] = collections.Counter()
        finished = 0

        async def guarded() -> None:
            nonlocal finished
            async with gate:
                try:
                    texts[await one()] += 1
                except Exception as exc:  # counted, by kind
                    errors[type(exc).__name__] += 1
                finally:
                    finished += 1
                    if reload_every and finished % reload_every == 0 and finished < args.streams:
                        proxy.reload()

        started = time.perf_counter()
        await asyncio.gather(*(guarded() for _ in range(args.streams)))
        elapsed = time.perf_counter() - started
        extra = await close()
        common = texts.most_common(1)[0][1] if texts else 0
        return {
            "failed": sum(errors.values()),
            "wrong": sum(texts.values()) - common,  # texts that differ from the usual one
            "kinds": ", ".join(f"{k} {n}" for k, n in errors.most_common(3)) or "-",
            # Streams completed with the right text only: a stream that failed fast is not
            # throughput (raw httpx loses hundreds to GOAWAY, which would inflate its rate).
            "rps": common / elapsed,
            "reloads": proxy.reloads,
            **extra,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reload-every", type=int, default=400)
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1000 streams")
    args = parser.parse_args()
    if args.quick:
        args.streams = 1000
    if find_nginx() is None:
        print("nginx is not installed (Debian: apt-get install nginx)", file=sys.stderr)
        return 1
    setups = [
        ("keepalive_requests 1000", 1000, None),
        ("keepalive_requests 100", 100, None),
        (f"reload every {args.reload_every} streams", 1000, args.reload_every),
    ]
    contenders: list[tuple[str, Contender]] = [
        ("raw httpx http2=True", raw_httpx),
        ("ChatFastpipe (defaults)", fastpipe()),
        ("ChatFastpipe max_retries=0", fastpipe(max_retries=0)),
        ('ChatFastpipe engine="httpx"', fastpipe(engine="httpx")),
    ]
    rows = []
    with emulator_process("--answer-tokens", str(args.answer_tokens)) as upstream:
        for setup, keepalive, reload_every in setups:
            for name, make in contenders:
                r = asyncio.run(
                    run(upstream, make, keepalive=keepalive, reload_every=reload_every, args=args)
                )
                rows.append([
                    setup, name, f"{r['failed']} / {args.streams}", r["wrong"], r["kinds"],
                    r.get("replays", "-"), r.get("retries", "-"), r["rps"], r["reloads"],
                ])  # fmt: skip
                print(rows[-1], file=sys.stderr)
    print(table(
        f"HTTP/2 behind nginx, {args.concurrency} concurrent streams ({machine()})",
        ["set-up", "client", "failed", "wrong text", "errors", "replays", "retries", "completed/s",
         "reloads"],
        rows,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
