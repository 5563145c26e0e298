"""The ``fastpipe`` command: demo, ask, emulate, preload, stats, bench.

Every sub-command runs on the embedded backends by default (no key, no network):
``--backend local`` is the real Gemma 3 270M model under a managed ``llama-server``,
``--backend emulator`` the package's own OpenAI/Ollama emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

__all__ = ["main"]

DEMO_QUESTIONS = (
    "What is the capital of France?",
    "What is the largest planet in the solar system?",
    "Who wrote Romeo and Juliet?",
)


class _Backend:
    """A started backend: its base URL, model name and how to make a chat model."""

    def __init__(self, name: str, base_url: str, model: str, extra: dict[str, Any]) -> None:
        self.name = name
        self.base_url = base_url
        self.model = model
        self.extra = extra

    def chat(self, **overrides: Any) -> Any:
        """A ChatFastpipe for this backend (OpenAI-compatible API)."""
        from langchain_fastpipe.chat_models import ChatFastpipe

        params: dict[str, Any] = {
            "provider": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "api_key": "not-needed",
            "temperature": 0.0,
            "max_tokens": 24,
            "stop": ["\n"],
            **self.extra,
            **overrides,
        }
        return ChatFastpipe(**params)


@contextlib.contextmanager
def _emulator(load_seconds: float) -> Iterator[tuple[Any, _Backend]]:
    from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, ModelProfile

    profile = ModelProfile(
        load_seconds=load_seconds,
        first_token_seconds=0.3,
        inter_token_seconds=1 / 30,
        answer_tokens=12,
    )
    with EmulatorServer(EmulatorConfig(default=profile)) as server:
        yield server, _Backend("emulator", f"{server.base_url}/v1", "emulated-model", {})


def _print_stats(model: Any) -> None:
    """Print the statistics of ``model``'s pool and streams (not the whole process's)."""
    from langchain_fastpipe.stats import get_stats

    s = model.pool.stats()
    versions = ", ".join(f"{k}: {v}" for k, v in s.get("http_versions", {}).items())
    print(
        f"  pool {s.get('endpoint')}: {s.get('requests')} requests, "
        f"{s.get('connections_opened')} connections opened, "
        f"reuse {s.get('reuse_ratio') or 0:.0%}, retries {s.get('retries')}, "
        f"in flight {s.get('in_flight')} (peak {s.get('peak_in_flight')}), {versions}"
    )
    streams = get_stats().get("streams", {}).get("models", {}).get(model.model_name)
    if streams:
        ttfc = streams["time_to_first_text"]
        print(
            f"  streams of {model.model_name}: {streams['streams']}, time to first chunk "
            f"p50 {ttfc['p50'] * 1000:.0f} ms, p95 {ttfc['p95'] * 1000:.0f} ms"
        )


async def _stream_answer(model: Any, question: str) -> tuple[str, float | None]:
    """Stream one answer to stdout; returns the text and the time to first chunk."""
    from langchain_fastpipe.streaming import astream_chunks

    chain = FEW_SHOT_PROMPT | model
    ttfc: float | None = None
    text: list[str] = []
    print(f"Q: {question}\nA: ", end="", flush=True)
    async for chunk in astream_chunks(chain, {"question": question}):
        if chunk.text and ttfc is None:
            ttfc = chunk.since_start
        text.append(chunk.text)
        print(chunk.text, end="", flush=True)
    print()
    return "".join(text), ttfc


async def _first_query(model: Any) -> float:
    start = time.perf_counter()
    await (FEW_SHOT_PROMPT | model).ainvoke({"question": DEMO_QUESTIONS[0]})
    return time.perf_counter() - start


async def _demo_emulator(load_seconds: float) -> None:
    from langchain_fastpipe.preload import ModelPreloader

    with _emulator(load_seconds) as (server, backend):
        print(f"emulator at {server.base_url}: model load {load_seconds:g} s, first token 0.3 s")
        cold = await _first_query(backend.chat())
        print(f"first query without preloading: {cold:.2f} s (it paid the model load)")
        server.unload()
        preloader = ModelPreloader()
        model = backend.chat()
        preloader.register(model, timeout=60)
        for result in await preloader.preload():
            print(f"preloaded {result.name}: {result.status.value} in {result.seconds:.2f} s")
        warm = await _first_query(model)
        print(f"first query after preloading:   {warm:.2f} s\n")
        await _answer_questions(model)


async def _demo_local() -> None:
    from langchain_fastpipe.local import LocalModelServer, find_free_port
    from langchain_fastpipe.preload import ModelPreloader

    port = find_free_port()
    server = LocalModelServer(port=port)
    backend = _Backend("local", f"http://127.0.0.1:{port}/v1", server.model, {})
    print("real local model: Gemma 3 270M (Q4_K_M) under llama-server, on this machine's CPU")
    try:
        start = time.perf_counter()
        await asyncio.to_thread(server.start)
        cold = time.perf_counter() - start + await _first_query(backend.chat())
        print(f"first query without preloading: {cold:.2f} s (server start + model load)")
        await asyncio.to_thread(server.stop)

        preloader = ModelPreloader()
        model = backend.chat()
        preloader.register(server, name="llama-server", timeout=120)
        results = await preloader.preload()
        # The warm-up carries the demo's prompt: llama.cpp's prompt cache then holds its
        # few-shot prefix, and the first query only processes the question.
        preloader.register(model, timeout=60, prompt=FEW_SHOT_PROMPT)
        results += await preloader.preload(names=[preloader.names()[-1]])
        for result in results:
            print(f"preloaded {result.name}: {result.status.value} in {result.seconds:.2f} s")
        warm = await _first_query(model)
        print(f"first query after preloading:   {warm:.2f} s\n")
        await _answer_questions(model)
    finally:
        await asyncio.to_thread(server.stop)


async def _answer_questions(model: Any) -> None:
    for question in DEMO_QUESTIONS:
        _text, ttfc = await _stream_answer(model, question)
        print(f"   (time to first chunk: {ttfc * 1000:.0f} ms)" if ttfc is not None else "")
    print("\nstatistics:")
    _print_stats(model)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.backend == "emulator":
        asyncio.run(_demo_emulator(args.load_seconds))
    else:
        asyncio.run(_demo_local())
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    async def run() -> None:
        if args.base_url:
            from langchain_fastpipe.chat_models import ChatFastpipe

            model = ChatFastpipe(
                provider=args.provider, model=args.model, base_url=args.base_url, max_tokens=256
            )
            await _stream_answer(model, args.question)
            return
        if args.backend == "emulator":
            with _emulator(0.0) as (_server, backend):
                await _stream_answer(backend.chat(), args.question)
            return
        from langchain_fastpipe.local import LocalModelServer

        with LocalModelServer() as server:
            backend = _Backend("local", server.openai_base_url, server.model, {})
            await _stream_answer(backend.chat(), args.question)

    asyncio.run(run())
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
    from langchain_fastpipe.emulator.__main__ import main as emulator_main

    return int(emulator_main(args.rest) or 0)


def _cmd_preload(args: argparse.Namespace) -> int:
    from langchain_fastpipe.preload import default_preloader

    if not default_preloader.names():
        print(
            "nothing registered: set FASTPIPE_PRELOAD "
            "(e.g. 'ollama:llama3@http://127.0.0.1:11434') or preload.models in FASTPIPE_CONFIG"
        )
        return 1
    results = default_preloader.preload_sync(timeout=args.timeout)
    for result in results:
        print(json.dumps(result.as_dict()))
    return 0 if all(r.ok for r in results) else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    from langchain_fastpipe.stats import get_stats

    if args.metrics:
        from langchain_fastpipe._metrics import FAMILIES

        for family in FAMILIES.values():
            labels = ",".join(family.labels)
            print(f"{family.name:40} {family.kind:9} {{{labels}}}  {family.help}")
        return 0
    if args.url:
        import httpx

        reply = httpx.get(args.url, timeout=10)
        reply.raise_for_status()
        print(json.dumps(reply.json(), indent=2) if not args.prometheus else reply.text)
        return 0
    if args.prometheus:
        from langchain_fastpipe.prometheus import render_prometheus

        print(render_prometheus(get_stats()), end="")
    else:
        print(json.dumps(get_stats(), indent=2, default=str))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from langchain_fastpipe.bench import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastpipe`` command."""
    parser = argparse.ArgumentParser(prog="fastpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="stream answers, with and without preloading, then stats")
    demo.add_argument("--backend", choices=("local", "emulator"), default="local")
    demo.add_argument("--load-seconds", type=float, default=3.0, help="emulator model load time")
    demo.set_defaults(func=_cmd_demo)

    ask = sub.add_parser("ask", help="stream the answer to one question")
    ask.add_argument("question")
    ask.add_argument("--backend", choices=("local", "emulator"), default="local")
    ask.add_argument("--base-url", help="use this server instead of an embedded backend")
    ask.add_argument("--provider", choices=("openai", "ollama"), default="openai")
    ask.add_argument("--model", default="default")
    ask.set_defaults(func=_cmd_ask)

    emulate = sub.add_parser("emulate", help="run the OpenAI/Ollama emulator (see --help)")
    emulate.add_argument("rest", nargs=argparse.REMAINDER)
    emulate.set_defaults(func=_cmd_emulate)

    pre = sub.add_parser("preload", help="warm the models named in FASTPIPE_PRELOAD / config")
    pre.add_argument("--timeout", type=float, default=None)
    pre.set_defaults(func=_cmd_preload)

    stats = sub.add_parser(
        "stats",
        help="print a statistics snapshot: this process's, or a running app's with --url",
    )
    stats.add_argument(
        "--url",
        help="GET this URL: an app mounting langchain_fastpipe.prometheus.stats_app, "
        "or an emulator's /_emulator/stats",
    )
    stats.add_argument("--prometheus", action="store_true", help="Prometheus text format")
    stats.add_argument(
        "--metrics", action="store_true", help="list every metric: name, type, labels, help"
    )
    stats.set_defaults(func=_cmd_stats)

    bench = sub.add_parser("bench", help="baseline vs optimized table (see fastpipe bench -h)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastpipe`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        # These sub-commands own their options: hand everything after the name over as is
        # (argparse's REMAINDER refuses a first word that starts with "--").
        rest = argv[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return _PASSTHROUGH[argv[0]](argparse.Namespace(rest=rest))
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


_PASSTHROUGH = {"bench": _cmd_bench, "emulate": _cmd_emulate}


if __name__ == "__main__":
    sys.exit(main())
