"""Soak test (``make soak``, not CI): minutes of mixed faults at high concurrency.

Runs an emulator on 127.0.0.1 (in this process, so the run is self-contained) and hammers it
through one ChatFastpipe pool with ``--concurrency`` workers for ``--minutes``, while a fault
injector keeps playing resets, 5xx, 429, hangs, slow drips, malformed and truncated replies
and the server sends GOAWAY / ``Connection: close`` every few hundred requests. Workers mix
full streams, streams abandoned after the first chunk, cancelled streams and JSON calls.

Invariants (exit status 1 when one is violated):

- every successful answer is exactly the deterministic reference text, and the text of a
  failed stream is a prefix of it (nothing lost or repeated);
- the pool's in-flight count returns to 0 at the end;
- the client never holds more connections than ``--limit`` (sampled all along);
- RSS at the end is less than 10% above RSS after the warm-up phase.

Usage::

    python benchmarks/soak.py                      # 5 minutes, 200 workers, pool of 50, h1
    python benchmarks/soak.py --minutes 0.5 --proto h2 --concurrency 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import cast

from langchain_core.messages import AIMessageChunk

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.errors import CircuitOpenError
from langchain_fastpipe.transport import get_pool

PROMPT = "soak the pipes"
RSS_LIMIT = 0.10
FAULTS = (
    Fault.reset_before_headers(),
    Fault.reset_mid_stream(after_chunks=2),
    Fault.status(500),
    Fault.status(503),
    Fault.rate_limit(retry_after="0.05"),
    Fault.hang_before_first_byte(1.5),
    Fault.slow_drip(0.01),
    Fault.malformed_chunk(after_chunks=1),
    Fault.truncated_json(),
)


@dataclass
class Tally:
    """What happened, by kind, and the invariants seen."""

    outcomes: Counter[str] = field(default_factory=Counter)
    wrong_text: int = 0
    max_connections: int = 0
    max_in_flight: int = 0
    samples: int = 0
    faults_injected: int = 0


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def client_sockets(port: int) -> int:
    """Client-side TCP sockets of this process open towards ``port`` (ESTABLISHED/CLOSE_WAIT)."""
    wanted = f"{port:04X}"
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[2].rsplit(":", 1)[1] == wanted and fields[3] in ("01", "08"):
                count += 1
    return count


async def one_call(model: ChatFastpipe, ref: str, rng: random.Random, tally: Tally) -> None:
    """One call of a random style; records its outcome and checks its text."""
    style = rng.choice(("stream", "stream", "invoke", "break", "cancel"))
    pieces: list[str] = []
    try:
        if style == "invoke":
            pieces.append((await model.ainvoke(PROMPT)).text)
        elif style == "stream":
            async for chunk in model.astream(PROMPT):
                pieces.append(chunk.text)
        elif style == "break":
            stream = cast(AsyncGenerator[AIMessageChunk, None], model.astream(PROMPT))
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    pieces.append(chunk.text)
                    break
        else:
            task = asyncio.ensure_future(_consume(model, pieces))
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    except Exception as exc:
        tally.outcomes[type(exc).__name__] += 1
        if not ref.startswith("".join(pieces)):
            tally.wrong_text += 1
        if isinstance(exc, CircuitOpenError):  # as an app would: wait for the probe time
            await asyncio.sleep(min(1.0, max(0.01, exc.retry_in)))
        return
    text = "".join(pieces)
    complete = style in ("stream", "invoke")
    if (complete and text != ref) or not ref.startswith(text):
        tally.wrong_text += 1
    tally.outcomes["ok" if complete else style] += 1


async def _consume(model: ChatFastpipe, pieces: list[str]) -> None:
    async for chunk in model.astream(PROMPT):
        pieces.append(chunk.text)


async def worker(model: ChatFastpipe, ref: str, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        await one_call(model, ref, rng, tally)


async def injector(server: EmulatorServer, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        server.inject(rng.choice(FAULTS), times=rng.randint(1, 3))
        tally.faults_injected += 1
        await asyncio.sleep(0.25)


async def monitor(server: EmulatorServer, model: ChatFastpipe, tally: Tally) -> None:
    pool = get_pool(model.endpoint_config)
    while True:
        tally.max_connections = max(tally.max_connections, client_sockets(server.port))
        tally.max_in_flight = max(tally.max_in_flight, pool.stats()["in_flight"])
        tally.samples += 1
        await asyncio.sleep(0.1)


async def soak(args: argparse.Namespace) -> int:
    h2 = args.proto == "h2"
    profile = ModelProfile(inter_token_seconds=0.002, fail_rate=0.01,
                           fail_fault=Fault.status(502))  # fmt: skip
    config = EmulatorConfig(default=profile, goaway_after=300, seed=args.seed)
    with EmulatorServer(config, http2=h2, tls=h2) as server:
        model = ChatFastpipe(
            provider=args.provider, model="emu",
            base_url=server.openai_base_url if args.provider == "openai" else server.base_url,
            verify=server.ca_cert_path or True, http2=h2, timeout=1.0,
            max_connections=args.limit, max_keepalive_connections=args.limit,
        )  # fmt: skip
        pool = get_pool(model.endpoint_config)
        ref = (await model.ainvoke(PROMPT)).text
        tally = Tally()
        watch = asyncio.ensure_future(monitor(server, model, tally))
        total = args.minutes * 60.0
        warm = min(30.0, max(2.0, total * 0.1))
        start = time.monotonic()
        deadline = start + total
        rss_warm: int | None = None
        try:
            workers = [
                asyncio.ensure_future(worker(model, ref, args.seed + i, deadline, tally))
                for i in range(args.concurrency)
            ]
            faults = asyncio.ensure_future(injector(server, args.seed, deadline, tally))
            await asyncio.sleep(warm)
            gc.collect()
            rss_warm = rss_bytes()
            await asyncio.gather(*workers, faults)
        finally:
            server.clear_faults()
            for _ in range(300):  # let abandoned generators be finalized
                if pool.stats()["in_flight"] == 0:
                    break
                gc.collect()
                await asyncio.sleep(0.05)
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        gc.collect()
        rss_end = rss_bytes()
        stats = pool.stats()
        elapsed = time.monotonic() - start
        growth = (rss_end - rss_warm) / rss_warm if rss_warm else 0.0
        calls = sum(tally.outcomes.values())
        print(f"soak: {args.proto} {args.provider}, {elapsed:.0f}s, "
              f"{args.concurrency} workers, pool limit {args.limit}")  # fmt: skip
        print(f"  calls {calls} ({calls / elapsed:.0f}/s), faults injected "
              f"{tally.faults_injected}, emulator requests {server.requests}")  # fmt: skip
        for kind, count in sorted(tally.outcomes.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<28} {count}")
        breaker = stats["breaker"].get("state")
        print(f"  pool: requests {stats['requests']}, retries {stats['retries']}, replays "
              f"{stats['replays']}, failures {stats['failures']}, connections opened "
              f"{stats['connections_opened']}, breaker {breaker}")  # fmt: skip
        print(f"  in-flight at end {stats['in_flight']} (peak {tally.max_in_flight})")
        print(f"  max client connections {tally.max_connections} / limit {args.limit} "
              f"({tally.samples} samples)")  # fmt: skip
        print(f"  RSS {rss_warm or 0:,} -> {rss_end:,} bytes ({growth:+.1%}, limit "
              f"{RSS_LIMIT:.0%})")  # fmt: skip
        print(f"  wrong or repeated text: {tally.wrong_text}")
        violations = []
        if stats["in_flight"] != 0:
            violations.append(f"in-flight {stats['in_flight']} != 0")
        if tally.max_connections > args.limit:
            violations.append(f"connections {tally.max_connections} > limit {args.limit}")
        if growth >= RSS_LIMIT:
            violations.append(f"RSS grew {growth:.1%} >= {RSS_LIMIT:.0%}")
        if tally.wrong_text:
            violations.append(f"{tally.wrong_text} calls got wrong or repeated text")
        if tally.outcomes["ok"] == 0:
            violations.append("no call succeeded")
        for violation in violations:
            print(f"VIOLATION: {violation}")
        print("soak: OK" if not violations else "soak: FAILED")
        return 1 if violations else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="duration (default 5)")
    parser.add_argument("--concurrency", type=int, default=200, help="workers (default 200)")
    parser.add_argument("--limit", type=int, default=50, help="pool max_connections (50)")
    parser.add_argument("--proto", choices=("h1", "h2"), default="h1",
                        help="h1: plain HTTP/1.1; h2: HTTP/2 over TLS")  # fmt: skip
    parser.add_argument("--provider", choices=("openai", "ollama"), default="openai")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.limit < 1:
        parser.error("--minutes must be > 0, --concurrency and --limit >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every invariant held, 1 otherwise."""
    args = parse_args(argv)
    # the in-process emulator's resets make asyncio log "socket.send() raised exception."
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
