"""Client overhead against a fast server: ChatFastpipe beside raw aiohttp, raw httpx, ChatOpenAI.

Run: ``python benchmarks/bench_fastserver.py [--quick]`` (or ``make bench``). The server is
``_fast_server.py`` (uvicorn + httptools, one worker, in its own process): unlike the
emulator it is cheaper per request than the clients, so what differs between rows is the
clients' own cost (a slow server hides it). Every client runs with its default settings:

- raw aiohttp: ``aiohttp.ClientSession()`` (at most 100 connections) and, as the ceiling a
  client can reach here, with ``TCPConnector(limit=256)``; raw httpx: ``httpx.AsyncClient()``;
- ``ChatFastpipe`` with no transport setting, and with ``engine="httpx"`` / ``"aiohttp"``;
- ``ChatOpenAI`` (langchain-openai, its own httpx client).

Sections, each interleaving the contenders round by round in shuffled order (machine noise
hits them alike); ratios are medians of the per-round ratios:

1. 256 concurrent streams of 20 tokens 5 ms apart: req/s, client CPU per request
   (``time.process_time()`` of this process only) and the server's CPU per request and
   utilisation of its one core (a client is server-bound when that nears 100%). On a
   shared, busy machine req/s follows the scheduler more than the clients; the ratios of
   client CPU per request (what one core would sustain) are shown beside them, with the
   part of it spent in the garbage collector (``gc.callbacks``): objects a request keeps
   alive while hundreds are in flight get promoted, and the full collections that follow
   scan the whole heap of the process (langchain-core's included).
2. Sequential ``ainvoke`` (a JSON reply sent at once): latency per call, x raw httpx.
3. Sequential streams: time to first token over raw httpx's (tokens 1 ms apart), and client
   CPU per streamed chunk: the CPU of a 100-token stream minus a 20-token one, per extra
   chunk, with no pause between tokens. With pauses every chunk also pays an event-loop
   wake-up (on this VM 50-150 us, noisier than the parsing it would hide), so the paced CPU
   per call is shown for information only.
4. Import time of ``from langchain_fastpipe import ChatFastpipe`` after
   ``from langchain_core.language_models import BaseChatModel`` in the same fresh process
   (median of several processes); langchain-openai's the same way.

Then a PASS/FAIL line per target of issue 11 (ratios measured side by side, never timed
asserts). ``--profile KIND`` runs one workload under cProfile instead (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import machine, median, p95, table
from _fast_server import FastServer, fast_server
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from langchain_fastpipe import ChatFastpipe, aclose_pools

KEY = "sk-bench-not-a-secret"
PROMPT = "Say something about connection pools."
MESSAGES = [{"role": "user", "content": PROMPT}]
LC_MESSAGES = [HumanMessage(PROMPT)]
MODEL = "bench"  # 5 ms between tokens (the server's default)
PACED_MODEL = "bench@1ms"  # sequential streams for time to first token: 1 ms between tokens
BURST_MODEL = "bench@0ms"  # sequential streams for CPU per chunk: no pause between tokens
CONCURRENCY = 256
TOKENS = 20
LONG = 100  # tokens of the long sequential stream (marginal CPU per chunk)

# Targets of issue 11.
T_AIOHTTP = 0.6  # 256 streams: >= 0.6x raw aiohttp's req/s
T_HTTPX = 3.0  # ... and >= 3x raw httpx's
T_INVOKE = 1.0  # ainvoke latency <= 1.0x raw httpx
T_TTFT_MS = 0.2  # time to first token <= raw httpx + 0.2 ms
T_CHUNK = 1.2  # client CPU per chunk <= 1.2x raw httpx
T_IMPORT_MS = 60.0  # import overhead over BaseChatModel <= 60 ms

RAW_AIOHTTP, RAW_AIOHTTP_256, RAW_HTTPX = "raw aiohttp", "raw aiohttp limit=256", "raw httpx"
FP_DEFAULT, FP_HTTPX, FP_AIOHTTP = (
    "ChatFastpipe (default)",
    'ChatFastpipe engine="httpx"',
    'ChatFastpipe engine="aiohttp"',
)
CHATOPENAI = "ChatOpenAI"
ORDER = [RAW_AIOHTTP, RAW_AIOHTTP_256, RAW_HTTPX, FP_DEFAULT, FP_HTTPX, FP_AIOHTTP, CHATOPENAI]
SEQ_ORDER = [n for n in ORDER if n != RAW_AIOHTTP_256]  # one at a time: limits do not matter

Call = Callable[[], Awaitable[int]]  # one request; returns the content chunks received


def payload(*, model: str, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Clients:
    """Every contender's client or model, built once, closed at the end."""

    base: str
    session: aiohttp.ClientSession
    session256: aiohttp.ClientSession
    httpx: httpx.AsyncClient
    models: dict[str, dict[tuple[str, int], Any]] = field(default_factory=dict)
    extra: list[Any] = field(default_factory=list)  # more clients/sessions to close

    def model(self, name: str, model: str, tokens: int) -> Any:
        """The LangChain model of contender ``name`` asking ``model`` for ``tokens``."""
        per = self.models.setdefault(name, {})
        if (model, tokens) not in per:
            per[model, tokens] = build_model(name, self.base, model, tokens)
        return per[model, tokens]

    async def aclose(self) -> None:
        await self.session.close()
        await self.session256.close()
        for other in self.extra:
            await (other.close() if isinstance(other, aiohttp.ClientSession) else other.aclose())
        await self.httpx.aclose()
        for per in self.models.values():
            for obj in per.values():
                client = getattr(obj, "async_client", None)
                inner = getattr(client, "_client", None)
                if isinstance(inner, httpx.AsyncClient):
                    await inner.aclose()
        await aclose_pools()


def build_model(name: str, base: str, model: str, tokens: int) -> Any:
    """A LangChain chat model with default transport settings (only the request is set)."""
    if name == CHATOPENAI:
        return ChatOpenAI(
            model=model,
            base_url=f"{base}/v1",
            api_key=KEY,  # type: ignore[arg-type]
            max_tokens=tokens,  # type: ignore[call-arg]
            stream_usage=True,  # the same request as every other contender's
        )
    engine = {FP_HTTPX: "httpx", FP_AIOHTTP: "aiohttp"}.get(name)
    kwargs: dict[str, Any] = {} if engine is None else {"engine": engine}
    return ChatFastpipe(
        model=model, provider="openai", base_url=f"{base}/v1", api_key=KEY, max_tokens=tokens,
        **kwargs,
    )  # fmt: skip


async def open_clients(base: str) -> Clients:
    return Clients(
        base=base,
        session=aiohttp.ClientSession(),  # default connector: at most 100 connections
        session256=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)),
        httpx=httpx.AsyncClient(),
    )


def stream_call(
    clients: Clients, name: str, *, model: str, tokens: int, ttft: list[float] | None = None
) -> Call:
    """One streamed request of contender ``name``; counts content chunks, records TTFT."""
    url = f"{clients.base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = payload(model=model, stream=True, max_tokens=tokens)
    loads = json.loads

    if name in (RAW_AIOHTTP, RAW_AIOHTTP_256):
        session = clients.session if name == RAW_AIOHTTP else clients.session256

        async def aiohttp_call() -> int:
            n = 0
            start = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as r:
                r.raise_for_status()
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = loads(line[6:])
                    if event.get("choices") and event["choices"][0]["delta"].get("content"):
                        if n == 0 and ttft is not None:
                            ttft.append(time.perf_counter() - start)
                        n += 1
            return n

        return aiohttp_call

    if name == RAW_HTTPX:
        client = clients.httpx

        async def httpx_call() -> int:
            n = 0
            start = time.perf_counter()
            async with client.stream("POST", url, json=body, headers=headers) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = loads(line[6:])
                    if event.get("choices") and event["choices"][0]["delta"].get("content"):
                        if n == 0 and ttft is not None:
                            ttft.append(time.perf_counter() - start)
                        n += 1
            return n

        return httpx_call

    lc = clients.model(name, model, tokens)

    async def lc_call() -> int:
        n = 0
        start = time.perf_counter()
        async for chunk in lc.astream(LC_MESSAGES):
            if chunk.content:
                if n == 0 and ttft is not None:
                    ttft.append(time.perf_counter() - start)
                n += 1
        return n

    return lc_call


def invoke_call(clients: Clients, name: str, *, model: str, tokens: int) -> Call:
    """One non-streamed request of contender ``name``."""
    url = f"{clients.base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = payload(model=model, stream=False, max_tokens=tokens)

    if name in (RAW_AIOHTTP, RAW_AIOHTTP_256):
        session = clients.session if name == RAW_AIOHTTP else clients.session256

        async def aiohttp_call() -> int:
            async with session.post(url, json=body, headers=headers) as r:
                r.raise_for_status()
                data = await r.json()
            return 1 if data["choices"][0]["message"]["content"] else 0

        return aiohttp_call

    if name == RAW_HTTPX:
        client = clients.httpx

        async def httpx_call() -> int:
            r = await client.post(url, json=body, headers=headers)
            r.raise_for_status()
            return 1 if r.json()["choices"][0]["message"]["content"] else 0

        return httpx_call

    lc = clients.model(name, model, tokens)

    async def lc_call() -> int:
        msg = await lc.ainvoke(LC_MESSAGES)
        return 1 if msg.content else 0

    return lc_call


# --- measurement ------------------------------------------------------------------------------


class GcTimer:
    """Client CPU spent in the garbage collector while active, and full collections run.

    With hundreds of streams in flight, what each request keeps alive is promoted to the
    oldest generation, whose collections scan the whole heap (langchain-core's included).
    """

    def __init__(self) -> None:
        self.cpu = 0.0
        self.full = 0
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
            return
        self.cpu += time.process_time() - self._start
        self.full += info["generation"] == 2

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def concurrent(
    call: Call, server: FastServer, *, concurrency: int, total: int
) -> dict[str, float]:
    """``total`` calls, ``concurrency`` in flight: req/s, CPU per request (client, server)."""
    latencies: list[float] = []
    errors = 0
    chunks = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal errors, chunks
        for _ in queue:
            t0 = time.perf_counter()
            try:
                got = await call()  # not ``chunks += await call()``: that reads chunks first
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            chunks += got

    s0 = server.cpu()
    with GcTimer() as gc_time:
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    server_cpu = server.cpu() - s0
    done = max(1, len(latencies))
    return {
        "rps": len(latencies) / wall,
        "cpu_ms": cpu / done * 1000,
        "server_cpu_ms": server_cpu / done * 1000,
        "server_util": server_cpu / wall,
        "client_util": cpu / wall,
        "p95": p95(latencies),
        "errors": errors,
        "chunks": chunks / done,
        "gc_ms": gc_time.cpu / done * 1000,
        "full_gcs": gc_time.full,
    }


def paired(values: dict[str, list[float]], name: str, ref: str, *, diff: bool = False) -> float:
    """Median over rounds of ``name``'s value over (or minus) ``ref``'s in the same round."""
    pairs = zip(values[name], values[ref], strict=True)
    return median([a - b if diff else a / b for a, b in pairs if diff or b])


async def bench_streams(
    clients: Clients, server: FastServer, quick: bool, *, freeze: bool = False
) -> dict[str, Any]:
    rounds, total = (2, CONCURRENCY) if quick else (5, CONCURRENCY * 3)
    calls = {n: stream_call(clients, n, model=MODEL, tokens=TOKENS) for n in ORDER}
    for call in calls.values():  # warm: connections, imports, caches
        await concurrent(call, server, concurrency=64, total=128)
    if freeze:  # what a server can do once started: later collections skip this heap
        gc.collect()
        gc.freeze()
    per: dict[str, list[dict[str, float]]] = {n: [] for n in ORDER}
    for _ in range(rounds):
        for name in random.sample(ORDER, len(ORDER)):
            gc.collect()
            per[name].append(
                await concurrent(calls[name], server, concurrency=CONCURRENCY, total=total)
            )
    rps = {n: [r["rps"] for r in per[n]] for n in ORDER}
    res = {n: {k: median([r[k] for r in per[n]]) for k in per[n][0]} for n in ORDER}
    for n in ORDER:
        res[n]["x_aiohttp"] = paired(rps, n, RAW_AIOHTTP)
        res[n]["x_aiohttp256"] = paired(rps, n, RAW_AIOHTTP_256)
        res[n]["x_httpx"] = paired(rps, n, RAW_HTTPX)
        res[n]["errors"] = sum(r["errors"] for r in per[n])
    for n in ORDER:  # what one client core would sustain: robust to a shared, busy machine
        res[n]["cpu_x_aiohttp256"] = res[RAW_AIOHTTP_256]["cpu_ms"] / res[n]["cpu_ms"]
        res[n]["cpu_x_httpx"] = res[RAW_HTTPX]["cpu_ms"] / res[n]["cpu_ms"]
    rows = [
        [
            n,
            r["rps"],
            r["x_aiohttp256"],
            r["x_aiohttp"],
            r["x_httpx"],
            r["cpu_ms"],
            r["gc_ms"],
            f"{r['cpu_x_aiohttp256']:.2f} / {r['cpu_x_httpx']:.2f}",
            r["server_cpu_ms"],
            f"{r['client_util']:.0%} / {r['server_util']:.0%}",
            r["p95"] * 1000,
            int(r["errors"]),
        ]
        for n, r in res.items()
    ]
    title = (
        f"{CONCURRENCY} concurrent streams x {TOKENS} tokens 5 ms apart "
        f"({total} requests per run, {rounds} rounds, medians)"
        + (", after gc.freeze() of the warmed-up process" if freeze else "")
    )
    header = ["client", "req/s", "x aiohttp limit=256", "x aiohttp default", "x raw httpx",
              "client CPU ms/req", "of which GC ms/req", "1/CPU x aiohttp limit=256 / x raw httpx",
              "server CPU ms/req", "CPU use client / server", "p95 ms", "errors"]  # fmt: skip
    return {"table": table(title, header, rows), "res": res}


async def sequential(
    calls: dict[str, Call], *, rounds: int, per_round: int
) -> dict[str, dict[str, list[float]]]:
    """Per-call wall time and client CPU per round, contenders interleaved round by round."""
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "n": []} for k in calls}
    for call in calls.values():
        for _ in range(5):
            await call()
    names = list(calls)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            call = calls[name]
            n = 0
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(per_round):
                n += await call()
            out[name]["wall"].append((time.perf_counter() - t0) / per_round)
            out[name]["cpu"].append((time.process_time() - c0) / per_round)
            out[name]["n"].append(n / per_round)
    return out


async def bench_invoke(clients: Clients, quick: bool) -> dict[str, Any]:
    rounds, per = (4, 15) if quick else (15, 50)
    calls = {n: invoke_call(clients, n, model=MODEL, tokens=TOKENS) for n in SEQ_ORDER}
    res = await sequential(calls, rounds=rounds, per_round=per)
    wall = {n: res[n]["wall"] for n in SEQ_ORDER}
    out = {
        n: {
            "wall": median(res[n]["wall"]),
            "cpu": median(res[n]["cpu"]),
            "x_httpx": paired(wall, n, RAW_HTTPX),
        }
        for n in SEQ_ORDER
    }
    rows = [[n, r["wall"] * 1000, r["x_httpx"], r["cpu"] * 1000] for n, r in out.items()]
    title = f"ainvoke, sequential, {TOKENS}-token JSON reply sent at once (medians per call)"
    header = ["client", "latency ms", "x raw httpx", "client CPU ms/call"]
    return {"table": table(title, header, rows), "res": out}


async def bench_stream_seq(clients: Clients, quick: bool) -> dict[str, Any]:
    """TTFT on paced streams; CPU per chunk on unpaced ones (see the module docstring)."""
    rounds, per = (4, 4) if quick else (12, 8)
    ttft: dict[str, list[float]] = {n: [] for n in SEQ_ORDER}
    calls: dict[str, Call] = {}
    for n in SEQ_ORDER:
        calls[f"{n}|paced"] = stream_call(
            clients, n, model=PACED_MODEL, tokens=TOKENS, ttft=ttft[n]
        )
        calls[f"{n}|short"] = stream_call(clients, n, model=BURST_MODEL, tokens=TOKENS)
        calls[f"{n}|long"] = stream_call(clients, n, model=BURST_MODEL, tokens=LONG)
    res = await sequential(calls, rounds=rounds, per_round=per)
    marginal: dict[str, list[float]] = {}
    for n in SEQ_ORDER:
        short, long = res[f"{n}|short"], res[f"{n}|long"]
        marginal[n] = [
            (cl - cs) / max(1.0, nl - ns)
            for cl, cs, nl, ns in zip(long["cpu"], short["cpu"], long["n"], short["n"], strict=True)
        ]
    # TTFT: the calls of a round are not paired one to one; compare medians of all calls.
    raw_ttft = median(ttft[RAW_HTTPX])
    out = {}
    for n in SEQ_ORDER:
        paced = res[f"{n}|paced"]
        out[n] = {
            "ttft_ms": median(ttft[n]) * 1000,
            "ttft_over_ms": (median(ttft[n]) - raw_ttft) * 1000,
            "marginal_us": median(marginal[n]) * 1e6,
            "marginal_x": paired(marginal, n, RAW_HTTPX),
            "short_cpu_ms": median(res[f"{n}|short"]["cpu"]) * 1000,
            "paced_cpu_ms": median(paced["cpu"]) * 1000,
            "paced_x": paired({k: res[f"{k}|paced"]["cpu"] for k in SEQ_ORDER}, n, RAW_HTTPX),
        }
    rows = [
        [
            n,
            r["ttft_ms"],
            r["ttft_over_ms"],
            r["marginal_us"],
            r["marginal_x"],
            r["short_cpu_ms"],
            r["paced_cpu_ms"],
            r["paced_x"],
        ]
        for n, r in out.items()
    ]
    title = (
        f"sequential streams (medians): TTFT of {TOKENS}-token streams 1 ms apart; CPU per "
        f"chunk = extra CPU of a {LONG}- over a {TOKENS}-token unpaced stream, per extra chunk"
    )
    header = ["client", "TTFT ms", "TTFT over raw httpx ms", "CPU us/chunk", "x raw httpx",
              f"CPU ms/call ({TOKENS} tok, unpaced)", f"CPU ms/call ({TOKENS} tok, 1 ms apart)",
              "x raw httpx"]  # fmt: skip
    return {"table": table(title, header, rows), "res": out}


IMPORT_CODE = """
import time
t0 = time.perf_counter()
from langchain_core.language_models import BaseChatModel
t1 = time.perf_counter()
{stmt}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def import_env(cache_dir: str) -> dict[str, str]:
    """This environment with bytecode caching on, its caches kept under ``cache_dir``.

    Users import from ``.pyc`` files; ``PYTHONDONTWRITEBYTECODE`` (set on some machines)
    would make every fresh process compile every module again, several times slower.
    ``PYTHONPYCACHEPREFIX`` keeps the caches out of the source and virtualenv trees.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def import_times(stmt: str, runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median (BaseChatModel alone, ``stmt`` after it) over ``runs`` fresh processes."""
    base: list[float] = []
    extra: list[float] = []
    code = IMPORT_CODE.format(stmt=stmt)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)  # noqa: S603
    for _ in range(runs):
        out = subprocess.check_output([sys.executable, "-c", code], env=env, text=True)  # noqa: S603
        a, b = out.split()
        base.append(float(a))
        extra.append(float(b))
    return median(base), median(extra)


def bench_import(quick: bool) -> dict[str, Any]:
    runs = 3 if quick else 9
    with tempfile.TemporaryDirectory(prefix="fastpipe-pycache-") as cache:
        env = import_env(cache)
        fp_base, fp = import_times("from langchain_fastpipe import ChatFastpipe", runs, env)
        co_base, co = import_times("from langchain_openai import ChatOpenAI", runs, env)
    rows = [
        ["from langchain_fastpipe import ChatFastpipe", fp_base * 1000, fp * 1000],
        ["from langchain_openai import ChatOpenAI", co_base * 1000, co * 1000],
    ]
    title = f"import time, fresh processes with bytecode caches (median of {runs})"
    header = ["statement", "BaseChatModel alone ms", "statement after it ms"]
    return {"table": table(title, header, rows), "fp_ms": fp * 1000, "co_ms": co * 1000}


def verdicts(
    streams: dict[str, Any], inv: dict[str, Any], seq: dict[str, Any], imp: dict[str, Any]
) -> str:
    """One PASS/FAIL line per target and ChatFastpipe variant (ChatOpenAI as the peer)."""

    def mark(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows: list[list[object]] = []
    for n in (FP_DEFAULT, FP_HTTPX, FP_AIOHTTP, CHATOPENAI):
        peer = " (peer)" if n == CHATOPENAI else ""
        s, i, q = streams["res"][n], inv["res"][n], seq["res"][n]
        checks = [
            ("256 streams req/s vs raw aiohttp limit=256", s["x_aiohttp256"], f">= {T_AIOHTTP}x",
             s["x_aiohttp256"] >= T_AIOHTTP),
            ("256 streams req/s vs raw aiohttp default", s["x_aiohttp"], f">= {T_AIOHTTP}x",
             s["x_aiohttp"] >= T_AIOHTTP),
            ("256 streams req/s vs raw httpx", s["x_httpx"], f">= {T_HTTPX}x",
             s["x_httpx"] >= T_HTTPX),
            ("  same, by client CPU/req: vs aiohttp limit=256", s["cpu_x_aiohttp256"],
             f">= {T_AIOHTTP}x", s["cpu_x_aiohttp256"] >= T_AIOHTTP),
            ("  same, by client CPU/req: vs raw httpx", s["cpu_x_httpx"], f">= {T_HTTPX}x",
             s["cpu_x_httpx"] >= T_HTTPX),
            ("ainvoke latency vs raw httpx", i["x_httpx"], f"<= {T_INVOKE}x",
             i["x_httpx"] <= T_INVOKE),
            ("TTFT over raw httpx (ms)", q["ttft_over_ms"], f"<= +{T_TTFT_MS}",
             q["ttft_over_ms"] <= T_TTFT_MS),
            ("client CPU per chunk vs raw httpx", q["marginal_x"], f"<= {T_CHUNK}x",
             q["marginal_x"] <= T_CHUNK),
        ]  # fmt: skip
        rows += [[n + peer, what, value, target, mark(ok)] for what, value, target, ok in checks]
    rows.append(
        ["ChatFastpipe", "import over BaseChatModel (ms)", imp["fp_ms"], f"<= {T_IMPORT_MS:g}",
         mark(imp["fp_ms"] <= T_IMPORT_MS)]
    )  # fmt: skip
    rows.append(
        ["ChatOpenAI (peer)", "import over BaseChatModel (ms)", imp["co_ms"],
         f"<= {T_IMPORT_MS:g}", mark(imp["co_ms"] <= T_IMPORT_MS)]
    )  # fmt: skip
    return table("targets (issue 11)", ["client", "measure", "value", "target", "verdict"], rows)


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    with fast_server(delay_ms=5.0, tokens=TOKENS) as server:
        print(f"server: _fast_server.py, uvicorn + httptools, 1 worker, loop={server.loop}")
        clients = await open_clients(server.base)
        try:
            if args.gc_freeze:
                frozen = await bench_streams(clients, server, args.quick, freeze=True)
                print(frozen["table"], flush=True)
                return
            streams = await bench_streams(clients, server, args.quick)
            print(streams["table"], flush=True)
            for name in (RAW_AIOHTTP_256, RAW_AIOHTTP):
                raw = streams["res"][name]
                bound = raw["server_util"] >= 0.85
                print(
                    f"\n{name}: server CPU {raw['server_cpu_ms']:.3f} ms/req "
                    f"({raw['server_util']:.0%} of its core) vs client CPU "
                    f"{raw['cpu_ms']:.3f} ms/req ({raw['client_util']:.0%}): "
                    + (
                        "SERVER-BOUND, ratios to it are a lower bound"
                        if bound
                        else "not server-bound"
                    )
                )
            inv = await bench_invoke(clients, args.quick)
            print(inv["table"], flush=True)
            seq = await bench_stream_seq(clients, args.quick)
            print(seq["table"], flush=True)
        finally:
            await clients.aclose()
    imp = bench_import(args.quick)
    print(imp["table"])
    print(verdicts(streams, inv, seq, imp))
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (2 cores shared: figures are noisy)")


# --- profiling --------------------------------------------------------------------------------

PROFILES = {
    "stream-aiohttp": (FP_AIOHTTP, "stream"),
    "stream-httpx": (FP_HTTPX, "stream"),
    "stream-default": (FP_DEFAULT, "stream"),
    "stream-raw-aiohttp": (RAW_AIOHTTP, "stream"),
    "stream-raw-httpx": (RAW_HTTPX, "stream"),
    "invoke": (FP_DEFAULT, "invoke"),
    "invoke-raw-httpx": (RAW_HTTPX, "invoke"),
    "stream-seq": (FP_DEFAULT, "stream-seq"),
    "stream-seq-raw-httpx": (RAW_HTTPX, "stream-seq"),
}


async def profile_async(args: argparse.Namespace) -> None:
    name, kind = PROFILES[args.profile]
    with fast_server(delay_ms=5.0, tokens=TOKENS) as server:
        clients = await open_clients(server.base)
        try:
            if kind == "stream":
                call = stream_call(clients, name, model=MODEL, tokens=TOKENS)
                await concurrent(call, server, concurrency=64, total=256)
                total = CONCURRENCY * args.profile_batches

                async def work() -> dict[str, float]:
                    return await concurrent(call, server, concurrency=CONCURRENCY, total=total)
            else:
                if kind == "invoke":
                    call = invoke_call(clients, name, model=MODEL, tokens=TOKENS)
                else:
                    call = stream_call(clients, name, model=BURST_MODEL, tokens=LONG)
                for _ in range(20):
                    await call()
                n = 100 * args.profile_batches

                async def work() -> dict[str, float]:
                    c0 = time.process_time()
                    for _ in range(n):
                        await call()
                    return {"cpu_ms": (time.process_time() - c0) / n * 1000}

            profiler = cProfile.Profile()
            profiler.enable()
            res = await work()
            profiler.disable()
        finally:
            await clients.aclose()
    out = Path(args.profile_out or f"/tmp/fastserver-{args.profile}.prof")  # noqa: S108
    profiler.dump_stats(out)
    print(f"{args.profile}: {res} (under cProfile); stats in {out}")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(args.profile_top)


# --- layers: where ChatFastpipe's client CPU goes -------------------------------------------


def layer_calls(clients: Clients, engine: str, *, model: str, tokens: int) -> dict[str, Call]:
    """The streamed request peeled layer by layer, each layer adding one to the one before.

    ``raw``: the engine itself with ChatFastpipe's pool limits (50 connections, 20 kept)
    reading raw bytes; ``httpx api``: (aiohttp engine only) httpx over ``httpx_aiohttp``'s
    transport; ``pool``: ``PooledClient.astream`` (admission, retries, breaker, stats);
    ``+ parser``: the provider's stream parser building the chunks; ``_astream``: the chat
    model's own generator (payload, headers, ``_ChunkParser``); ``astream``: LangChain's
    ``BaseChatModel.astream`` around it (callbacks, ids, metadata, the final merge).
    """
    fp: ChatFastpipe = clients.model(FP_AIOHTTP if engine == "aiohttp" else FP_HTTPX, model, tokens)
    pool = fp.pool
    adapter = fp.provider_adapter
    url = f"{clients.base}/v1/chat/completions"
    path = adapter.chat_path
    headers = {"Authorization": f"Bearer {KEY}"}
    body = fp._payload(LC_MESSAGES, None, {}, stream=True)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=20)
    out: dict[str, Call] = {}
    if engine == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))
        clients.extra.append(session)

        async def raw() -> int:
            async with session.post(url, json=body, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass
            return tokens

        out["raw aiohttp (limit 50)"] = raw

        def connector() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))

        over = httpx.AsyncClient(transport=AiohttpTransport(client=connector))
        clients.extra.append(over)

        async def httpx_api() -> int:
            async with over.stream("POST", url, json=body, headers=headers) as r:
                async for _ in r.aiter_raw():
                    pass
            return tokens

        out["+ httpx API (httpx_aiohttp)"] = httpx_api
    else:
        client = httpx.AsyncClient(limits=limits)
        clients.extra.append(client)

        async def raw() -> int:
            async with client.stream("POST", url, json=body, headers=headers) as r:
                async for _ in r.aiter_raw():
                    pass
            return tokens

        out["raw httpx (limits 50/20)"] = raw

    async def pooled() -> int:
        async for _ in pool.astream(path, body, headers=headers):
            pass
        return tokens

    async def parsed() -> int:
        parser = adapter.stream_parser(endpoint=pool.endpoint)
        n = 0
        async for data in pool.astream(path, body, headers=headers):
            n += len(parser.feed(data))
        return n + len(parser.finish())

    async def generator() -> int:
        n = 0
        async for _ in fp._astream(list(LC_MESSAGES)):
            n += 1
        return n

    async def full() -> int:
        n = 0
        async for _ in fp.astream(LC_MESSAGES):
            n += 1
        return n

    out["+ PooledClient.astream"] = pooled
    out["+ stream parser"] = parsed
    out["+ ChatFastpipe._astream"] = generator
    out["+ BaseChatModel.astream"] = full
    return out


def invoke_layer_calls(
    clients: Clients, engine: str, *, model: str, tokens: int
) -> dict[str, Call]:
    """A non-streamed request peeled layer by layer (see :func:`layer_calls`)."""
    fp: ChatFastpipe = clients.model(FP_AIOHTTP if engine == "aiohttp" else FP_HTTPX, model, tokens)
    pool = fp.pool
    adapter = fp.provider_adapter
    url = f"{clients.base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = fp._payload(LC_MESSAGES, None, {}, stream=False)
    out: dict[str, Call] = {}
    if engine == "aiohttp":
        session = clients.session

        async def raw() -> int:
            async with session.post(url, json=body, headers=headers) as r:
                return len(await r.json())

        out["raw aiohttp"] = raw
    else:
        client = clients.httpx

        async def raw() -> int:
            r = await client.post(url, json=body, headers=headers)
            return len(r.json())

        out["raw httpx"] = raw

    async def pooled() -> int:
        data, _ = await pool.apost_json(adapter.chat_path, body, headers=headers)
        return len(data)

    async def parsed() -> int:
        data, _ = await pool.apost_json(adapter.chat_path, body, headers=headers)
        return len(adapter.parse_response(data, endpoint=pool.endpoint).generations)

    async def generate() -> int:
        result = await fp._agenerate(list(LC_MESSAGES))
        return len(result.generations)

    async def full() -> int:
        return 1 if (await fp.ainvoke(LC_MESSAGES)).content else 0

    out["+ PooledClient.apost_json"] = pooled
    out["+ parse_response"] = parsed
    out["+ ChatFastpipe._agenerate"] = generate
    out["+ BaseChatModel.ainvoke"] = full
    return out


async def layers_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    rounds = 3 if args.quick else 5
    with fast_server(delay_ms=5.0, tokens=TOKENS) as server:
        clients = await open_clients(server.base)
        try:
            for engine in ("httpx", "aiohttp"):
                conc = layer_calls(clients, engine, model=MODEL, tokens=TOKENS)
                short = layer_calls(clients, engine, model=BURST_MODEL, tokens=TOKENS)
                long = layer_calls(clients, engine, model=BURST_MODEL, tokens=LONG)
                for call in conc.values():
                    await concurrent(call, server, concurrency=64, total=128)
                cpu: dict[str, list[float]] = {n: [] for n in conc}
                for _ in range(rounds):
                    for name in random.sample(list(conc), len(conc)):
                        gc.collect()
                        r = await concurrent(
                            conc[name], server, concurrency=CONCURRENCY, total=CONCURRENCY * 2
                        )
                        cpu[name].append(r["cpu_ms"])
                seq = await sequential(
                    {**{f"{n}|s": c for n, c in short.items()},
                     **{f"{n}|l": c for n, c in long.items()}},
                    rounds=rounds * 2, per_round=6,
                )  # fmt: skip
                rows = []
                prev_req = prev_chunk = 0.0
                for name in conc:
                    per_req = median(cpu[name])
                    s_, l_ = seq[f"{name}|s"]["cpu"], seq[f"{name}|l"]["cpu"]
                    chunk = median([(b - a) / (LONG - TOKENS) for a, b in zip(s_, l_, strict=True)])
                    one = median(s_)
                    rows.append([name, per_req, per_req - prev_req, one * 1000,
                                 chunk * 1e6, (chunk - prev_chunk) * 1e6])  # fmt: skip
                    prev_req, prev_chunk = per_req, chunk
                print(
                    table(
                        f'engine="{engine}": client CPU by layer (each row adds one layer)',
                        [
                            "layer",
                            f"ms/req at {CONCURRENCY} streams",
                            "added ms/req",
                            f"ms per {TOKENS}-token call, sequential",
                            "us/chunk",
                            "added us/chunk",
                        ],
                        rows,
                    ),
                    flush=True,
                )
                inv = invoke_layer_calls(clients, engine, model=MODEL, tokens=TOKENS)
                res = await sequential(inv, rounds=rounds * 2, per_round=20)
                rows = []
                prev_wall = prev_cpu = 0.0
                for name in inv:
                    wall, cpu_ = median(res[name]["wall"]), median(res[name]["cpu"])
                    rows.append([name, wall * 1000, (wall - prev_wall) * 1000, cpu_ * 1000,
                                 (cpu_ - prev_cpu) * 1000])  # fmt: skip
                    prev_wall, prev_cpu = wall, cpu_
                header = ["layer", "latency ms", "added ms", "client CPU ms", "added CPU ms"]
                title = f'engine="{engine}": ainvoke, sequential, by layer'
                print(table(title, header, rows), flush=True)
        finally:
            await clients.aclose()
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (2 cores shared: figures are noisy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="only the 256-stream section, after gc.freeze() of the warmed-up process",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), help="cProfile one workload")
    parser.add_argument("--profile-out", help="where to write the .prof file")
    parser.add_argument("--profile-batches", type=int, default=4, help="work under profile")
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument(
        "--layers", action="store_true", help="client CPU of ChatFastpipe layer by layer"
    )
    args = parser.parse_args()
    if args.profile:
        asyncio.run(profile_async(args))
    elif args.layers:
        asyncio.run(layers_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
