"""Cold start vs preloaded: the first query's latency with and without ModelPreloader.

Backends: the emulator (in its own process) with a 3 s and a 10 s model load (the
original report's 43 s first query, scaled), and the real llama-server + Gemma 3 270M
(skipped when the ``local`` extra is missing). For each: the first query on a cold
model, the preload time, the first query after preloading, and a warm query (the
target: preloaded first query within 1.1x of a warm one).

The real model gets a second table, its warm start side by side: a generic warm-up
(server start + the 1-token "hi" request) against one that carries the application's
prompt (``register(llm, prompt=FEW_SHOT_PROMPT)``), each on a fresh server with the
default 4 slots, rounds interleaved. Reported per warm-up: the prompt tokens the first
query found in llama.cpp's prompt cache (counted by the server: ``cached_tokens``), the
first query, a warm query (a new question after others: what an application's later
queries are) and their ratio. Asking the very same question again is shown too: it finds
its whole prompt cached, which no warm-up can do for a question it does not know.

Run: ``.venv/bin/python benchmarks/bench_coldstart.py [--quick] [--rounds N]`` (about
1-2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emulator_process, machine, table
from langchain_core.messages import AIMessage

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import LocalServerError
from langchain_fastpipe.local import LocalModelServer, find_binary, find_free_port
from langchain_fastpipe.preload import ModelPreloader
from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

QUESTION = "Why is the sky blue?"
#: The real model's first query after preloading, then new questions as warm queries.
FIRST_QUESTION = "What is the capital of France?"
WARM_QUESTIONS = (
    "Who wrote Romeo and Juliet?",
    "What is the capital of Japan?",
    "Which planet is known as the Red Planet?",
)


async def timed_query(llm: ChatFastpipe, prompt: Any) -> float:
    start = time.perf_counter()
    await llm.ainvoke(prompt)
    return time.perf_counter() - start


async def timed_question(llm: ChatFastpipe, question: str) -> tuple[float, int, int]:
    """One few-shot query: its seconds, prompt tokens and prompt tokens found cached."""
    start = time.perf_counter()
    reply = await (FEW_SHOT_PROMPT | llm).ainvoke({"question": question})
    seconds = time.perf_counter() - start
    assert isinstance(reply, AIMessage)
    usage = reply.usage_metadata or {}
    cached = int((usage.get("input_token_details") or {}).get("cache_read", 0) or 0)
    return seconds, int(usage.get("input_tokens", 0)), cached


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


def _real_llm(server: LocalModelServer) -> ChatFastpipe:
    return ChatFastpipe(
        model=server.model,
        base_url=server.openai_base_url,
        api_key="none",
        temperature=0,
        max_tokens=8,
        stop=["\n"],
    )


async def real_warm_start(*, with_prompt: bool) -> dict[str, Any]:
    """One fresh server (default slots): preload, first query, warm queries, same again."""
    server = LocalModelServer(port=find_free_port())
    model = _real_llm(server)
    preloader = ModelPreloader()
    preloader.register(server)
    t0 = time.perf_counter()
    (started,) = await preloader.preload()
    preloader.register(model, prompt=FEW_SHOT_PROMPT if with_prompt else None)
    results = await preloader.preload()
    preload_seconds = time.perf_counter() - t0
    try:
        first, prompt_tokens, cached = await timed_question(model, FIRST_QUESTION)
        warm = [(await timed_question(model, q))[0] for q in WARM_QUESTIONS]
        again = (await timed_question(model, FIRST_QUESTION))[0]
    finally:
        await preloader.aclose()
    return {
        "status": ",".join(r.status.value for r in (started, *results)),
        "preload": preload_seconds,
        "first": first,
        "prompt_tokens": prompt_tokens,
        "cached": cached,
        "warm": warm,
        "again": again,
    }


async def real_rows(rounds: int) -> tuple[list[object], str] | None:
    """The real model's row of the main table, and its warm-start table."""
    try:
        find_binary()
    except LocalServerError as exc:
        print(f"(real model skipped: {exc})")
        return None
    # Cold: nothing runs; the first query has to start the server, then ask.
    start = time.perf_counter()
    async with LocalModelServer() as server:
        await timed_question(_real_llm(server), FIRST_QUESTION)
        cold = time.perf_counter() - start
    # Preloaded: the preloader starts the server and warms the chat model (with or
    # without the application's prompt), on a fresh server each round.
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(rounds):
        for with_prompt in (False, True):  # interleaved, so both see the same machine
            runs[with_prompt].append(await real_warm_start(with_prompt=with_prompt))
    rows: list[list[object]] = []
    medians: dict[bool, dict[str, float]] = {}
    for with_prompt, label in ((False, "model load only ('hi')"), (True, "+ the app's prompt")):
        done = runs[with_prompt]
        m = {
            key: statistics.median(r[key] for r in done)
            for key in ("preload", "first", "again", "cached", "prompt_tokens")
        }
        m["warm"] = statistics.median(w for r in done for w in r["warm"])
        medians[with_prompt] = m
        rows.append([label, f"{m['cached']:g} of {m['prompt_tokens']:g}", m["first"], m["warm"],
                     m["first"] / m["warm"], m["again"], m["first"] / m["again"]])  # fmt: skip
    header = ["warm-up", "first query: cached prompt tokens", "first query",
              "warm query (new question)", "first / warm", "same question again",
              "first / same again"]  # fmt: skip
    title = f"llama-server + Gemma 3 270M warm start, 4 slots (seconds, median of {rounds} rounds)"
    best = medians[True]
    status = ",".join(sorted({r["status"] for r in runs[True]}))
    row: list[object] = ["llama-server + Gemma 3 270M, prompt warm-up", cold, best["preload"],
                         best["first"], best["warm"], cold / best["first"],
                         best["first"] / best["warm"], status]  # fmt: skip
    return row, table(title, header, rows)


async def main(loads: list[float], real: bool, rounds: int) -> None:
    rows: list[list[object]] = [await emulator_row(load) for load in loads]
    warm_start: str | None = None
    if real:
        found = await real_rows(rounds)
        if found is not None:
            rows.append(found[0])
            warm_start = found[1]
    header = ["backend", "cold first query", "preload", "first after preload", "warm query",
              "cold / preloaded", "preloaded / warm", "preload status"]  # fmt: skip
    print(f"Machine: {machine()}")
    print(table("First query: cold vs preloaded (seconds)", header, rows))
    print(
        "\ncold first query = the query that pays the model load (real model: server start "
        "+ query);\npreloaded / warm near 1.0 means preloading removed the cold start."
    )
    if warm_start is not None:
        print(warm_start)
        print(
            "\ncached prompt tokens are counted by llama-server; times on a shared machine are "
            "noisy,\nthe counts are not."
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=float, nargs="*", default=[3.0, 10.0])
    parser.add_argument("--no-real", action="store_true", help="skip the real model")
    parser.add_argument("--rounds", type=int, default=7, help="real-model warm-start rounds")
    parser.add_argument("--quick", action="store_true", help="one round, one emulator load")
    ns = parser.parse_args()
    loads = ns.loads[:1] if ns.quick else ns.loads
    asyncio.run(main(loads, not ns.no_real, 1 if ns.quick else ns.rounds))
