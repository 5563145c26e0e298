"""The command line of ``fastpipe bench``: arguments, the run, the table or JSON, the plot."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from langchain_fastpipe._bench.results import (
    BACKENDS,
    BenchOptions,
    Progress,
    plot_report,
    render_report,
    report_json,
)
from langchain_fastpipe._bench.run import run_bench
from langchain_fastpipe.errors import ConfigError, LocalServerError, PreloadError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fastpipe bench``."""
    parser = argparse.ArgumentParser(
        prog="fastpipe bench",
        description=(
            "Baseline vs optimized, measured against the targets: first query < 5 s, "
            "average < 8 s, p95 < 10 s, time to first chunk < 2 s."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "both"),
        default="both",
        help="which backend to measure (both)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="warm queries per configuration (10; 3 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer queries (a smoke run)")
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=10.0,
        help="emulator model load; the title says when it is scaled (10)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the emulator's configurations one after another",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write JSON results to FILE, or print them instead of the table when no FILE is given",
    )
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="bar charts (matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The :class:`BenchOptions` that parsed arguments describe.

    Raises:
        ConfigError: ``--queries`` below 1 or ``--load-seconds`` negative.
    """
    queries = args.queries if args.queries is not None else (3 if args.quick else 10)
    if queries < 1:
        raise ConfigError(f"fastpipe bench: --queries must be >= 1, got {queries}")
    if args.load_seconds < 0:
        raise ConfigError(f"fastpipe bench: --load-seconds must be >= 0, got {args.load_seconds}")
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    return BenchOptions(
        backends=backends,
        queries=queries,
        load_seconds=args.load_seconds,
        sequential=args.sequential,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fastpipe bench``; returns the exit status (0, or 2 on a usage/setup error).

    The exit status does not depend on the targets: the table says what passed.
    """
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--"]:  # ``fastpipe bench -- --quick``: the separator is not ours
        args_list = args_list[1:]
    args = parser.parse_args(args_list)
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs matplotlib: pip install 'langchain-fastpipe[plot]'",
                file=sys.stderr,
            )
            return 2
    progress = Progress(options.steps(), None if args.no_progress else sys.stderr)
    try:
        reports = asyncio.run(run_bench(options, progress=progress))
    except (LocalServerError, PreloadError) as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress.close()
    data = report_json(reports, options=options.as_dict())
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(f"machine: {data['machine']}\n")
        print(render_report(reports))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            print(f"\nJSON written to {args.json}")
    if args.plot:
        plot_report(reports, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0
