"""Cold start vs preloaded: the first query's latency with and without ModelPreloader.

Backends: the emulator (in its own process) with a 3 s and a 10 s model load (the
original report's 43 s first query, scaled), and the real llama-server + Gemma 3 270M
(skipped when the ``local`` extra is missing). For each: the first query on a cold
model, the preload time, the first query after preloading, and a warm query (the
target: preloaded first query within 1.1x of a warm one).

Run: ``.venv/bin/python benchmarks/bench_coldstart.py`` (about 40-90 s).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emulator_process, machine, table

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import LocalServerError
from langchain_fastpipe.local import LocalModelServer, find_binary, find_free_port
from langchain_fastpipe.preload import ModelPreloader

QUESTION = "Why is the sky blue?"
FEW_SHOT: list[tuple[str, str]] = [
    ("system", "Answer with the city name only."),
    ("human", "What is the capital of Germany?"),
    ("ai", "Berlin"),
    ("human", "What is the capital of France?"),
]


async def timed_query(llm: ChatFastpipe, prompt: Any) -> float:
    start = time.perf_counter()
    await llm.ainvoke(prompt)
    return time.perf_counter() - start


async def emulator_row(load: float) -> list[object]:
    args = ["--load-seconds", str(load), "--first-token-seconds", "0.02"]
    with emulator_process(*args) as base:

        def llm(model: str) -> ChatFastpipe:
            return ChatFastpipe(
                provider="ollama", model=model, base_url=base, max_tokens=12, keep_alive="10m"
            )

        cold = await timed_query(llm("cold"), QUESTION)
        pre_llm = llm("preloaded")
        preloader = ModelPreloader()
        preloader.register(pre_llm, timeout=load + 30)
        (result,) = await preloader.preload()
        first = await timed_query(pre_llm, QUESTION)
        warm = min([await timed_query(pre_llm, QUESTION) for _ in range(3)])
    return [f"emulator, {load:g} s load", cold, result.seconds, first, warm, cold / first,
            first / warm, result.status.value]  # fmt: skip


async def real_row() -> list[object] | None:
    try:
        find_binary()
    except LocalServerError as exc:
        print(f"(real model skipped: {exc})")
        return None

    def llm(server: LocalModelServer) -> ChatFastpipe:
        return ChatFastpipe(
            model=server.model,
            base_url=server.openai_base_url,
            api_key="none",
            temperature=0,
            max_tokens=8,
            stop=["\n"],
        )

    # Cold: nothing runs; the first query has to start the server, then ask.
    start = time.perf_counter()
    async with LocalModelServer(parallel=1) as server:
        await timed_query(llm(server), FEW_SHOT)
        cold = time.perf_counter() - start
    # Preloaded: the preloader starts the server and warms the chat model at startup.
    server = LocalModelServer(parallel=1, port=find_free_port())
    model = llm(server)
    preloader = ModelPreloader()
    preloader.register(server)
    t0 = time.perf_counter()
    (started,) = await preloader.preload()
    preloader.register(model)
    results = await preloader.preload()
    preload_seconds = time.perf_counter() - t0
    try:
        first = await timed_query(model, FEW_SHOT)
        warm = min([await timed_query(model, FEW_SHOT) for _ in range(3)])
    finally:
        await preloader.aclose()
    status = ",".join(r.status.value for r in (started, *results))
    return ["llama-server + Gemma 3 270M", cold, preload_seconds, first, warm, cold / first,
            first / warm, status]  # fmt: skip


async def main(loads: list[float], real: bool) -> None:
    rows: list[list[object]] = [await emulator_row(load) for load in loads]
    if real:
        row = await real_row()
        if row is not None:
            rows.append(row)
    header = ["backend", "cold first query", "preload", "first after preload", "warm query",
              "cold / preloaded", "preloaded / warm", "preload status"]  # fmt: skip
    print(f"Machine: {machine()}")
    print(table("First query: cold vs preloaded (seconds)", header, rows))
    print(
        "\ncold first query = the query that pays the model load (real model: server start "
        "+ query);\npreloaded / warm near 1.0 means preloading removed the cold start."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=float, nargs="*", default=[3.0, 10.0])
    parser.add_argument("--no-real", action="store_true", help="skip the real model")
    ns = parser.parse_args()
    asyncio.run(main(ns.loads, not ns.no_real))
