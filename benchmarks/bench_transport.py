"""ChatFastpipe against raw httpx, ChatOpenAI and aiohttp on the emulator, side by side.

Run: ``python benchmarks/bench_transport.py [--quick]`` (or ``make bench``). The emulator runs in
its own process so that the CPU measured here is the client's alone. Every row interleaves
the contenders round by round, so machine noise hits them alike; the table reports medians
and ratios, never single times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from _common import emulator_process, emulator_stats, machine, median, p95, table
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from langchain_fastpipe import ChatFastpipe, aclose_pools

KEY = "sk-bench-not-a-secret"
MESSAGES = [{"role": "user", "content": "Say something about connection pools."}]
LC_MESSAGES = [HumanMessage("Say something about connection pools.")]

Call = Callable[[], Awaitable[int]]  # one request; returns chunks received


def payload(*, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "bench",
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --- contenders -------------------------------------------------------------------------------


def httpx_client(limit: int, *, http2: bool = False) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=limit, max_keepalive_connections=min(limit, 20 if limit == 50 else limit)
    )
    return httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(30.0, connect=5.0), http1=not http2, http2=http2
    )


def raw_httpx_invoke(client: httpx.AsyncClient, base: str, max_tokens: int) -> Call:
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def call() -> int:
        r = await client.post(
            url, json=payload(stream=False, max_tokens=max_tokens), headers=headers
        )
        r.raise_for_status()
        return len(r.json()["choices"][0]["message"]["content"]) and 1

    return call


def raw_httpx_stream(
    client: httpx.AsyncClient, base: str, max_tokens: int, ttft: list[float]
) -> Call:
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def call() -> int:
        n = 0
        start = time.perf_counter()
        body = payload(stream=True, max_tokens=max_tokens)
        async with client.stream("POST", url, json=body, headers=headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    if n == 0:
                        ttft.append(time.perf_counter() - start)
                    n += 1
        return n

    return call


def aiohttp_stream(session: aiohttp.ClientSession, base: str, max_tokens: int) -> Call:
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def call() -> int:
        n = 0
        body = payload(stream=True, max_tokens=max_tokens)
        async with session.post(url, json=body, headers=headers) as r:
            r.raise_for_status()
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    n += 1
        return n

    return call


def lc_invoke(model: Any) -> Call:
    async def call() -> int:
        msg = await model.ainvoke(LC_MESSAGES)
        return 1 if msg.content else 0

    return call


def lc_stream(model: Any, ttft: list[float] | None = None) -> Call:
    async def call() -> int:
        n = 0
        start = time.perf_counter()
        async for chunk in model.astream(LC_MESSAGES):
            if chunk.content:
                if n == 0 and ttft is not None:
                    ttft.append(time.perf_counter() - start)
                n += 1
        return n

    return call


def fastpipe(
    base: str,
    *,
    limit: int = 50,
    keepalive: int = 20,
    h2c: bool = False,
    max_tokens: int,
    engine: str = "httpx",
) -> ChatFastpipe:
    return ChatFastpipe(
        engine=engine,
        provider="openai",
        model="bench",
        base_url=f"{base}/v1",
        api_key=KEY,
        max_tokens=max_tokens,
        max_connections=limit,
        max_keepalive_connections=keepalive,
        http2_prior_knowledge=h2c,
        max_retries=0,
    )


def chatopenai(base: str, *, max_tokens: int, limit: int | None = None) -> ChatOpenAI:
    kwargs: dict[str, Any] = {}
    if limit is not None:
        kwargs["http_async_client"] = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=limit,
                max_keepalive_connections=min(limit, 20 if limit == 50 else limit),
            ),
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
    return ChatOpenAI(
        model="bench",
        base_url=f"{base}/v1",
        api_key=KEY,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        max_retries=0,
        stream_usage=True,
        **kwargs,
    )


# --- measurement ------------------------------------------------------------------------------


async def sequential(
    calls: dict[str, Call], *, rounds: int, per_round: int
) -> dict[str, dict[str, float]]:
    """Per-call wall time and client CPU, interleaving contenders round by round."""
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    chunks: dict[str, int] = dict.fromkeys(calls, 0)
    for call in calls.values():  # warm: connections, imports, caches
        for _ in range(5):
            await call()
    names = list(calls)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            call = calls[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(per_round):
                chunks[name] += await call()
            wall[name].append((time.perf_counter() - t0) / per_round)
            cpu[name].append((time.process_time() - c0) / per_round)
    return {
        k: {
            "wall": median(wall[k]),
            "cpu": median(cpu[k]),
            "chunks": chunks[k] / (rounds * per_round),
        }
        for k in calls
    }


async def concurrent(call: Call, *, concurrency: int, total: int) -> dict[str, float]:
    """Run ``total`` calls with ``concurrency`` in flight; throughput, p95 latency, CPU."""
    latencies: list[float] = []
    errors = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for _ in queue:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "rps": len(latencies) / wall,
        "p95": p95(latencies),
        "cpu_ms": (time.process_time() - c0) / max(1, len(latencies)) * 1000,
        "errors": errors,
    }


def import_time(module: str, runs: int = 5) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    times = [
        float(subprocess.check_output([sys.executable, "-c", code], text=True))  # noqa: S603
        for _ in range(runs)
    ]
    return median(times)


# --- the rows ---------------------------------------------------------------------------------


async def bench_overhead(base: str, quick: bool) -> list[str]:
    out: list[str] = []
    rounds, per = (5, 20) if quick else (15, 40)
    async with httpx_client(50) as client:
        fp = fastpipe(base, max_tokens=8)
        co = chatopenai(base, max_tokens=8)
        res = await sequential(
            {
                "raw httpx": raw_httpx_invoke(client, base, 8),
                "ChatFastpipe": lc_invoke(fp),
                "ChatOpenAI": lc_invoke(co),
            },
            rounds=rounds,
            per_round=per,
        )
        raw = res["raw httpx"]["wall"]
        rows = [
            [name, r["wall"] * 1000, r["cpu"] * 1000, r["wall"] / raw] for name, r in res.items()
        ]
        out.append(
            table(
                "ainvoke, sequential, HTTP/1.1 (median per call)",
                ["client", "wall ms", "client CPU ms", "x raw httpx"],
                rows,
            )
        )

        ttft: dict[str, list[float]] = {"raw httpx": [], "ChatFastpipe": [], "ChatOpenAI": []}
        fp_s = fastpipe(base, max_tokens=200)
        co_s = chatopenai(base, max_tokens=200)
        res = await sequential(
            {
                "raw httpx": raw_httpx_stream(client, base, 200, ttft["raw httpx"]),
                "ChatFastpipe": lc_stream(fp_s, ttft["ChatFastpipe"]),
                "ChatOpenAI": lc_stream(co_s, ttft["ChatOpenAI"]),
            },
            rounds=rounds,
            per_round=max(4, per // 4),
        )
        co_cpu = res["ChatOpenAI"]["cpu"] / max(1.0, res["ChatOpenAI"]["chunks"])
        raw_ttft = median(ttft["raw httpx"])
        rows = []
        for name, r in res.items():
            per_chunk = r["cpu"] / max(1.0, r["chunks"])
            rows.append(
                [
                    name,
                    r["chunks"],
                    per_chunk * 1e6,
                    per_chunk / co_cpu,
                    median(ttft[name]) * 1000,
                    (median(ttft[name]) - raw_ttft) * 1000,
                ]
            )
        out.append(
            table(
                "astream, 200 tokens, HTTP/1.1 (medians)",
                [
                    "client",
                    "chunks/call",
                    "CPU us/chunk",
                    "x ChatOpenAI",
                    "TTFT ms",
                    "TTFT over raw ms",
                ],
                rows,
            )
        )
    return out


async def bench_concurrency(base: str, quick: bool) -> list[str]:
    out: list[str] = []
    tokens = 20
    for conc in (64, 256):
        total = conc * (2 if quick else 4)
        rows: list[list[object]] = []
        for label, limit in (("default limits (50)", 50), (f"limits = {conc}", conc)):
            async with (
                httpx_client(limit) as client,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session,
            ):
                contenders: dict[str, Call] = {
                    "raw httpx h1": raw_httpx_stream(client, base, tokens, []),
                    "aiohttp h1": aiohttp_stream(session, base, tokens),
                    "ChatFastpipe h1": lc_stream(
                        fastpipe(
                            base,
                            limit=limit,
                            keepalive=min(limit, 20 if limit == 50 else limit),
                            max_tokens=tokens,
                        )
                    ),
                    "ChatFastpipe aiohttp": lc_stream(
                        fastpipe(
                            base,
                            limit=limit,
                            keepalive=min(limit, 20 if limit == 50 else limit),
                            max_tokens=tokens,
                            engine="aiohttp",
                        )
                    ),
                    "ChatOpenAI": lc_stream(chatopenai(base, max_tokens=tokens, limit=limit)),
                }
                results = {}
                for call in contenders.values():
                    await concurrent(call, concurrency=min(conc, 16), total=32)  # warm
                for name in random.sample(list(contenders), len(contenders)):
                    results[name] = await concurrent(
                        contenders[name], concurrency=conc, total=total
                    )
                ref_co = results["ChatOpenAI"]["rps"]
                ref_raw = results["raw httpx h1"]["rps"]
                for name, r in results.items():
                    rows.append(
                        [
                            label,
                            name,
                            r["rps"],
                            r["rps"] / ref_co,
                            r["rps"] / ref_raw,
                            r["p95"] * 1000,
                            r["cpu_ms"],
                            int(r["errors"]),
                        ]
                    )
        async with httpx_client(conc, http2=True) as client:
            h2 = {
                "raw httpx h2c": raw_httpx_stream(client, base, tokens, []),
                'ChatFastpipe h2c engine="httpx"': lc_stream(
                    fastpipe(base, limit=conc, keepalive=20, h2c=True, max_tokens=tokens)
                ),
                "ChatFastpipe h2c (default: h2)": lc_stream(
                    fastpipe(
                        base, limit=conc, keepalive=20, h2c=True, max_tokens=tokens, engine="auto"
                    )
                ),
            }
            for name, call in h2.items():
                await concurrent(call, concurrency=16, total=32)
                r = await concurrent(call, concurrency=conc, total=total)
                rows.append(
                    [
                        "HTTP/2 (h2c)",
                        name,
                        r["rps"],
                        r["rps"] / ref_co,
                        r["rps"] / ref_raw,
                        r["p95"] * 1000,
                        r["cpu_ms"],
                        int(r["errors"]),
                    ]
                )
        out.append(
            table(
                f"{conc} concurrent streams x {tokens} tokens ({total} requests each)",
                [
                    "limits",
                    "client",
                    "req/s",
                    "x ChatOpenAI",
                    "x raw httpx",
                    "p95 ms",
                    "CPU ms/req",
                    "errors",
                ],
                rows,
            )
        )
    return out


async def bench_connections(base: str) -> list[str]:
    rows = []
    for name, model in (
        ("ChatFastpipe", fastpipe(base, max_tokens=10)),
        ("ChatOpenAI", chatopenai(base, max_tokens=10)),
    ):
        before = emulator_stats(base)["connections_opened"]
        for _ in range(100):
            async for _chunk in model.astream(LC_MESSAGES):
                pass
        rows.append([name, emulator_stats(base)["connections_opened"] - before])
    return [
        table(
            "connections opened by 100 sequential streamed calls (server's count)",
            ["client", "connections"],
            rows,
        )
    ]


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    with emulator_process("--answer-tokens", "200") as base:
        sections = await bench_overhead(base, args.quick)
        sections += await bench_connections(base)
        sections += await bench_concurrency(base, args.quick)
        await aclose_pools()  # close this loop's pooled clients (aiohttp sessions included)
    fp_imp, co_imp = import_time("langchain_fastpipe"), import_time("langchain_openai")
    sections.append(
        table(
            "import time (median of 5 fresh processes)",
            ["module", "seconds", "x langchain_openai"],
            [["langchain_fastpipe", fp_imp, fp_imp / co_imp], ["langchain_openai", co_imp, 1.0]],
        )
    )
    print("\n".join(sections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
