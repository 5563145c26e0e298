"""Run every benchmark in one go and print each table: ``python benchmarks/run_all.py [--quick]``.

``make bench`` calls this. Each benchmark runs as its own subprocess (one after another, so
they do not compete for the CPU), its output streamed as it comes; a missing script is
skipped, a failing one is reported and the others still run. The exit status is 1 if any
benchmark failed. ``--quick`` is passed to every benchmark that has the option (fewer
rounds), the others run as they are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (title, command arguments after the Python interpreter); scripts run in this order.
BENCHMARKS: list[tuple[str, list[str]]] = [
    (
        "transport: ChatFastpipe vs raw httpx, ChatOpenAI, aiohttp",
        [str(HERE / "bench_transport.py")],
    ),
    (
        "fast server: client overhead vs raw aiohttp, raw httpx, ChatOpenAI (uvicorn+httptools)",
        [str(HERE / "bench_fastserver.py")],
    ),
    (
        "HTTP/2 behind nginx: streams lost to GOAWAY, raw httpx vs ChatFastpipe",
        [str(HERE / "bench_nginx_goaway.py")],
    ),
    (
        "streaming: StreamingChunk overhead and time to first chunk",
        [str(HERE / "bench_streaming.py")],
    ),
    ("cold start: preloading", [str(HERE / "bench_coldstart.py")]),
    (
        "quality: the real model's accuracy, plain path vs optimized path",
        [str(HERE / "bench_quality.py")],
    ),
    (
        "pipeline: ranked fallbacks, hedging, first-chunk timeouts",
        [str(HERE / "bench_pipeline.py")],
    ),
    (
        "fastpipe bench: baseline vs optimized against the response-time targets",
        ["-m", "langchain_fastpipe.bench", "--no-progress"],
    ),
]


def takes_quick(args: list[str]) -> bool:
    """Whether the benchmark understands ``--quick`` (its source mentions the option)."""
    if args[0] == "-m":
        return True
    return "--quick" in Path(args[0]).read_text(encoding="utf-8")


def run_one(title: str, args: list[str], *, quick: bool, timeout: float) -> tuple[str, float]:
    """Run one benchmark, streaming its output; its outcome and duration."""
    script = Path(args[0])
    if args[0] != "-m" and not script.exists():
        print(f"\n## {title}\n\nskipped: {script.name} is not there (yet)", flush=True)
        return "skipped", 0.0
    cmd = [sys.executable, *args, *(["--quick"] if quick and takes_quick(args) else [])]
    print(
        f"\n## {title}\n\n$ {' '.join(Path(a).name if a.endswith('.py') else a for a in cmd)}",
        flush=True,
    )
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, timeout=timeout, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s", time.monotonic() - start
    outcome = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return outcome, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="WORD",
        help="run only the benchmarks whose title contains WORD (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="limit per benchmark (s)")
    args = parser.parse_args(argv)
    chosen = [
        (title, cmd)
        for title, cmd in BENCHMARKS
        if not args.only or any(word.lower() in title.lower() for word in args.only)
    ]
    summary: list[tuple[str, str, float]] = []
    for title, cmd in chosen:
        outcome, seconds = run_one(title, cmd, quick=args.quick, timeout=args.timeout)
        summary.append((title.split(":")[0], outcome, seconds))
    print("\n## summary\n")
    for name, outcome, seconds in summary:
        print(f"- {name}: {outcome} ({seconds:.0f} s)")
    print(f"- total: {sum(s for _, _, s in summary):.0f} s")
    return 1 if any(o not in ("ok", "skipped") for _, o, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
