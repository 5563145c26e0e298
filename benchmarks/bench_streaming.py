"""What the StreamingChunk wrapper costs: CPU per chunk and time to first chunk.

Run: ``python benchmarks/bench_streaming.py [--quick]`` (or ``make bench``). Two tables:

1. Client CPU per chunk of ``astream_chunks(model, ...)`` (StreamingChunk, timings, stream
   statistics) against a bare ``model.astream(...)``, on an in-process source
   (``GenericFakeChatModel``, thousands of chunks, no I/O) and on ``ChatFastpipe`` against
   the emulator in its own process. ``time.process_time`` over many chunks; bare and wrapped
   runs interleave in shuffled order, round by round; the overhead is the median of the
   per-round differences. Target: <= 2 us per chunk.
2. Time to first chunk against the emulator's own first-token time (0.05 s), for a raw
   httpx SSE stream, ``ChatFastpipe.astream`` and ``astream_chunks``: medians over
   interleaved calls. Target: ``astream_chunks`` <= 1 ms over the server's first token.
   "over server" includes loopback HTTP and the emulator's own work, which no client avoids;
   so the table also judges the same 1 ms against a raw httpx stream's time to first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from _common import emulator_process, machine, median, table
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from langchain_fastpipe import ChatFastpipe
from langchain_fastpipe.streaming import astream_chunks

FIRST_TOKEN = 0.05
OVERHEAD_TARGET_US = 2.0
TTFC_TARGET_MS = 1.0
KEY = "sk-bench-not-a-secret"
MESSAGES = [HumanMessage("Stream a long answer, please.")]

Consume = Callable[[], Awaitable[int]]  # one call; returns the chunks received


def bare(model: Any) -> Consume:
    async def run() -> int:
        n = 0
        async for _chunk in model.astream(MESSAGES):
            n += 1
        return n

    return run


def wrapped(model: Any) -> Consume:
    async def run() -> int:
        n = 0
        async for _chunk in astream_chunks(model, MESSAGES):
            n += 1
        return n

    return run


async def cpu_per_chunk(
    contenders: dict[str, Consume], *, rounds: int, calls: int
) -> dict[str, list[float]]:
    """Client CPU seconds per chunk of each contender, one value per round."""
    for run in contenders.values():  # warm: imports, pools, caches
        await run()
    out: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            chunks = 0
            c0 = time.process_time()
            for _ in range(calls):
                chunks += await contenders[name]()
            out[name].append((time.process_time() - c0) / max(1, chunks))
    return out


def paired_overhead(base: list[float], other: list[float]) -> float:
    """Median of the per-round differences (other - base)."""
    return median([o - b for b, o in zip(base, other, strict=True)])


async def bench_overhead(base_url: str, quick: bool) -> str:
    rows: list[list[object]] = []
    words = " ".join(f"word{i}" for i in range(1000))  # ~2000 chunks (words and spaces)
    fake = GenericFakeChatModel(messages=itertools.repeat(AIMessage(content=words)))
    fp = ChatFastpipe(
        provider="openai", model="bench", base_url=f"{base_url}/v1", api_key=KEY,
        max_tokens=400, max_retries=0,
    )  # fmt: skip
    sources: list[tuple[str, Any, int, int]] = [
        ("GenericFakeChatModel (in process)", fake, 9 if quick else 25, 2 if quick else 4),
        ("ChatFastpipe -> emulator (HTTP/1.1)", fp, 7 if quick else 15, 3 if quick else 6),
    ]
    for label, model, rounds, calls in sources:
        res = await cpu_per_chunk(
            {"bare astream": bare(model), "astream_chunks": wrapped(model)},
            rounds=rounds,
            calls=calls,
        )
        chunks = await bare(model)()
        base = median(res["bare astream"])
        over = paired_overhead(res["bare astream"], res["astream_chunks"])
        rows.append([
            label, chunks, base * 1e6, median(res["astream_chunks"]) * 1e6, over * 1e6,
            "PASS" if over * 1e6 <= OVERHEAD_TARGET_US else "FAIL",
        ])  # fmt: skip
    return table(
        "StreamingChunk wrapper: client CPU per chunk "
        f"(medians; target <= {OVERHEAD_TARGET_US:g} us)",
        ["source", "chunks/call", "bare us/chunk", "wrapped us/chunk", "overhead us", "target"],
        rows,
    )


def raw_httpx_ttfc(client: httpx.AsyncClient, base_url: str) -> Callable[[], Awaitable[float]]:
    url = f"{base_url}/v1/chat/completions"
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "Stream a long answer, please."}],
        "max_tokens": 20,
        "stream": True,
    }

    async def run() -> float:
        start = time.perf_counter()
        first = float("nan")
        async with client.stream(
            "POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if first != first and line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    if event.get("choices") and event["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - start
        return first

    return run


def iter_ttfc(
    make: Callable[[], AsyncIterator[Any]], text: Callable[[Any], str]
) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        start = time.perf_counter()
        first = float("nan")
        async for item in make():
            if first != first and text(item):
                first = time.perf_counter() - start
        return first

    return run


async def bench_ttfc(base_url: str, quick: bool) -> str:
    fp = ChatFastpipe(
        provider="openai", model="bench", base_url=f"{base_url}/v1", api_key=KEY,
        max_tokens=20, max_retries=0,
    )  # fmt: skip
    calls = 20 if quick else 60
    async with httpx.AsyncClient(timeout=30.0) as client:
        contenders = {
            "raw httpx SSE": raw_httpx_ttfc(client, base_url),
            "ChatFastpipe.astream": iter_ttfc(
                lambda: fp.astream(MESSAGES), lambda c: str(c.content)
            ),
            "astream_chunks(ChatFastpipe)": iter_ttfc(
                lambda: astream_chunks(fp, MESSAGES), lambda c: str(c.text)
            ),
        }
        for run in contenders.values():  # warm connections
            for _ in range(3):
                await run()
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for _ in range(calls):
            random.shuffle(names)
            for name in names:
                samples[name].append(await contenders[name]())
    raw = median(samples["raw httpx SSE"])
    rows = []
    for name, values in samples.items():
        ttfc = median(values)
        over_server = (ttfc - FIRST_TOKEN) * 1000
        over_raw = (ttfc - raw) * 1000
        verdict = raw_verdict = ""
        if name.startswith("astream_chunks"):
            verdict = "PASS" if over_server <= TTFC_TARGET_MS else "FAIL"
            raw_verdict = "PASS" if over_raw <= TTFC_TARGET_MS else "FAIL"
        rows.append([name, ttfc * 1000, over_server, over_raw, verdict, raw_verdict])
    return table(
        f"time to first chunk, emulator first token {FIRST_TOKEN * 1000:g} ms (medians of {calls}; "
        f"target: astream_chunks <= {TTFC_TARGET_MS:g} ms over the server)",
        [
            "client",
            "TTFC ms",
            "over server ms",
            "over raw httpx ms",
            "target (server)",
            "target (raw httpx)",
        ],
        rows,
    )


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    with emulator_process(
        "--first-token-seconds", str(FIRST_TOKEN), "--answer-tokens", "400"
    ) as base:
        sections = [await bench_overhead(base, args.quick), await bench_ttfc(base, args.quick)]
    print("\n".join(sections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
