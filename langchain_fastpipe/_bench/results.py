"""The pure parts of ``fastpipe bench``: configurations, results, verdicts, table, JSON.

Everything here is computed from measured samples without I/O (the plot writes a file),
so it is tested on its own.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.stats import quantile

if TYPE_CHECKING:
    from langchain_fastpipe.config import FastpipeConfig

#: The metrics of the table, in column order.
METRICS: tuple[str, ...] = ("first_query", "average", "p95", "ttfc")

#: The targets, in seconds: each metric must be strictly below its target.
TARGETS: Mapping[str, float] = {"first_query": 5.0, "average": 8.0, "p95": 10.0, "ttfc": 2.0}

_METRIC_LABELS: Mapping[str, str] = {
    "first_query": "first query s",
    "average": "average s",
    "p95": "p95 s",
    "ttfc": "TTFC s",
}

#: Backends ``--backend`` accepts (``both`` runs the two in turn).
BACKENDS: tuple[str, ...] = ("emulator", "local")

#: Questions asked in turn (the first is the cold query).
QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "What is the largest planet in the solar system?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water at sea level?",
    "How many continents are there?",
    "What gas do plants absorb from the air?",
    "What is the chemical symbol of gold?",
    "Which ocean is the largest?",
)

_SCHEMA_VERSION = 1


# ----------------------------------------------------------------------- configurations
@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One row of the table: a name and the four feature flags.

    Attributes:
        name: Row name (``baseline``, ``preloading``, ..., ``all_on``).
        preloading: ``enable_model_preloading``.
        pooling: ``enable_connection_pooling``.
        streaming: ``enable_response_streaming``.
        optimized: ``enable_optimized_pipeline``.
    """

    name: str
    preloading: bool = False
    pooling: bool = False
    streaming: bool = False
    optimized: bool = False

    def flags(self) -> dict[str, bool]:
        """The flags under their documented config names."""
        return {
            "enable_model_preloading": self.preloading,
            "enable_connection_pooling": self.pooling,
            "enable_response_streaming": self.streaming,
            "enable_optimized_pipeline": self.optimized,
        }

    def short_flags(self) -> str:
        """A compact flag string for the table, e.g. ``P-S-`` (Preload, pOol, Stream, Opt)."""
        marks = (
            ("P", self.preloading),
            ("C", self.pooling),
            ("S", self.streaming),
            ("O", self.optimized),
        )
        return "".join(letter if on else "-" for letter, on in marks)

    def fastpipe_config(self, base_url: str, model: str) -> FastpipeConfig:
        """The :class:`FastpipeConfig` of this row for one backend.

        Args:
            base_url: The backend's OpenAI-compatible base URL (``.../v1``).
            model: The model name to request.

        Returns:
            A validated configuration with this row's flags.
        """
        from langchain_fastpipe.config import FastpipeConfig

        return FastpipeConfig.load(
            env={},
            overrides={
                "performance_optimizations": {**self.flags(), "max_retries": 0},
                "backend": {
                    "provider": "openai",
                    "base_url": base_url,
                    "model": model,
                    "api_key": "not-needed",
                },
            },
        )


#: Every flag off, each optimization alone, every flag on.
CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig(name="baseline"),
    BenchConfig(name="preloading", preloading=True),
    BenchConfig(name="pooling", pooling=True),
    BenchConfig(name="streaming", streaming=True),
    BenchConfig(name="optimized_pipeline", optimized=True),
    BenchConfig(name="all_on", preloading=True, pooling=True, streaming=True, optimized=True),
)


# ----------------------------------------------------------------------- results (pure)
@dataclass(frozen=True, kw_only=True)
class QuerySample:
    """One measured query.

    Attributes:
        total: Seconds until the complete answer (or the failure).
        ttfc: Seconds until the first chunk with text; None if none came.
        chunks: Chunks with text received.
        error: The failure's type and message, or None when the query succeeded.
    """

    total: float
    ttfc: float | None
    chunks: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the query produced an answer."""
        return self.error is None and self.chunks > 0

    def shifted(self, seconds: float) -> QuerySample:
        """This sample with ``seconds`` added to both times (e.g. a server start)."""
        ttfc = None if self.ttfc is None else self.ttfc + seconds
        return QuerySample(
            total=self.total + seconds, ttfc=ttfc, chunks=self.chunks, error=self.error
        )


@dataclass(frozen=True, kw_only=True)
class ConfigResult:
    """The measured figures of one configuration on one backend.

    Attributes:
        config: The configuration's name.
        flags: Its four flags.
        metrics: ``first_query``, ``average``, ``p95`` and ``ttfc`` in seconds (None when
            not measured, e.g. every query failed).
        queries: Warm queries measured (the cold one excluded).
        errors: Failed queries, cold one included.
        loads_in_first_query: Model loads (emulator) or server starts (local) that happened
            while the first query's clock ran: 0 when preloading did its job.
        text_chunks: Mean chunks with text per warm answer (1 when streaming is off).
        preload_seconds: Seconds the preloader took before the clock started, if it ran.
        error_samples: Up to three distinct error messages, for diagnosis.
    """

    config: str
    flags: dict[str, bool]
    metrics: dict[str, float | None]
    queries: int
    errors: int
    loads_in_first_query: int | None
    text_chunks: float | None
    preload_seconds: float | None = None
    error_samples: tuple[str, ...] = ()


@dataclass(kw_only=True)
class BackendReport:
    """The results of one backend.

    Attributes:
        backend: ``emulator`` or ``local``.
        title: The table title (names the profile and anything scaled).
        profile: The backend's knobs, for the JSON.
        results: One result per configuration, in :data:`CONFIGS` order.
        skipped: Why the backend was not measured, if it was not.
    """

    backend: str
    title: str
    profile: dict[str, Any] = field(default_factory=dict)
    results: list[ConfigResult] = field(default_factory=list)
    skipped: str | None = None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    config: BenchConfig,
    cold: QuerySample | None,
    warm: Sequence[QuerySample],
    *,
    loads_in_first_query: int | None = None,
    preload_seconds: float | None = None,
) -> ConfigResult:
    """Reduce one configuration's samples to its table row (pure).

    Args:
        config: The configuration measured.
        cold: The first query (None if it was not measured).
        warm: The following queries.
        loads_in_first_query: Loads or server starts during the first query.
        preload_seconds: Time the preloader took before the clock started.

    Returns:
        The result: failed queries are counted in ``errors`` and left out of the times.
    """
    good = [s for s in warm if s.ok]
    totals = [s.total for s in good]
    ttfcs = [s.ttfc for s in good if s.ttfc is not None]
    failed = [s for s in (*([cold] if cold else []), *warm) if not s.ok]
    samples: list[str] = []
    for sample in failed:
        text = sample.error or "empty answer"
        if text not in samples:
            samples.append(text)
    metrics: dict[str, float | None] = {
        "first_query": cold.total if cold is not None and cold.ok else None,
        "average": _mean(totals),
        "p95": quantile(totals, 0.95),
        "ttfc": _mean(ttfcs),
    }
    return ConfigResult(
        config=config.name,
        flags=config.flags(),
        metrics=metrics,
        queries=len(warm),
        errors=len(failed),
        loads_in_first_query=loads_in_first_query,
        text_chunks=_mean([float(s.chunks) for s in good]),
        preload_seconds=preload_seconds,
        error_samples=tuple(samples[:3]),
    )


def evaluate(
    metrics: Mapping[str, float | None], targets: Mapping[str, float] = TARGETS
) -> dict[str, bool | None]:
    """Pass (True) or fail (False) of each metric against its target; None if unmeasured.

    A metric passes when it is strictly below its target ("first query < 5 s").
    """
    verdict: dict[str, bool | None] = {}
    for name, target in targets.items():
        value = metrics.get(name)
        verdict[name] = None if value is None else value < target
    return verdict


def all_pass(verdict: Mapping[str, bool | None]) -> bool:
    """Whether every metric was measured and passed."""
    return bool(verdict) and all(v is True for v in verdict.values())


def _cell(value: float | None, ok: bool | None) -> str:
    if value is None:
        return "n/a"
    mark = "ok" if ok else "FAIL"
    return f"{value:.2f} {mark}"


def render_table(report: BackendReport, targets: Mapping[str, float] = TARGETS) -> str:
    """A Markdown table of one backend: configurations x metrics with pass/fail (pure).

    Args:
        report: The backend's results.
        targets: Target of each metric, in seconds.

    Returns:
        The title line and the table (or the reason the backend was skipped).
    """
    lines = [f"### {report.title}", ""]
    if report.skipped:
        lines.append(f"skipped: {report.skipped}")
        return "\n".join(lines)
    header = [
        "config",
        "flags PCSO",
        *(_METRIC_LABELS[m] for m in METRICS),
        "loads in 1st",
        "chunks",
        "errors",
        "targets",
    ]
    rows: list[list[str]] = [header]
    for result in report.results:
        verdict = evaluate(result.metrics, targets)
        flags = BenchConfig(
            name=result.config,
            preloading=result.flags["enable_model_preloading"],
            pooling=result.flags["enable_connection_pooling"],
            streaming=result.flags["enable_response_streaming"],
            optimized=result.flags["enable_optimized_pipeline"],
        ).short_flags()
        rows.append(
            [
                result.config,
                flags,
                *(_cell(result.metrics.get(m), verdict.get(m)) for m in METRICS),
                "n/a" if result.loads_in_first_query is None else str(result.loads_in_first_query),
                "n/a" if result.text_chunks is None else f"{result.text_chunks:.1f}",
                str(result.errors),
                "PASS" if all_pass(verdict) else "FAIL",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    goal = ", ".join(
        f"{_METRIC_LABELS[m].split(' s')[0]} < {targets[m]:g} s" for m in METRICS if m in targets
    )
    lines += [
        "",
        f"targets: {goal}. flags: P preloading, "
        "C connection pooling, S streaming, O optimized pipeline.",
        "average, p95 and TTFC are over the warm queries; TTFC with streaming off is the "
        "whole answer. 'loads in 1st' = model loads or server starts paid by the first query.",
    ]
    for result in report.results:
        for sample in result.error_samples:
            lines.append(f"error in {result.config}: {sample}")
    return "\n".join(lines)


def render_report(reports: Sequence[BackendReport], targets: Mapping[str, float] = TARGETS) -> str:
    """Every backend's table, separated by blank lines (pure)."""
    return "\n\n".join(render_table(report, targets) for report in reports)


def report_json(
    reports: Sequence[BackendReport],
    *,
    options: Mapping[str, Any] | None = None,
    machine: str | None = None,
    targets: Mapping[str, float] = TARGETS,
) -> dict[str, Any]:
    """The machine-readable results (pure; JSON-serializable).

    Shape::

        {"schema": 1, "machine": str, "options": {...}, "targets": {metric: seconds},
         "metrics": ["first_query", "average", "p95", "ttfc"],
         "backends": {name: {"title": str, "profile": {...}, "skipped": str | None,
                             "configs": {config: {"flags": {...}, "metrics": {...},
                                                  "pass": {...}, "all_pass": bool,
                                                  "queries": int, "errors": int,
                                                  "loads_in_first_query": int | None,
                                                  "text_chunks": float | None,
                                                  "preload_seconds": float | None,
                                                  "error_samples": [str]}}}}}
    """
    backends: dict[str, Any] = {}
    for report in reports:
        configs: dict[str, Any] = {}
        for result in report.results:
            verdict = evaluate(result.metrics, targets)
            configs[result.config] = {
                "flags": dict(result.flags),
                "metrics": dict(result.metrics),
                "pass": verdict,
                "all_pass": all_pass(verdict),
                "queries": result.queries,
                "errors": result.errors,
                "loads_in_first_query": result.loads_in_first_query,
                "text_chunks": result.text_chunks,
                "preload_seconds": result.preload_seconds,
                "error_samples": list(result.error_samples),
            }
        backends[report.backend] = {
            "title": report.title,
            "profile": dict(report.profile),
            "skipped": report.skipped,
            "configs": configs,
        }
    return {
        "schema": _SCHEMA_VERSION,
        "machine": machine if machine is not None else describe_machine(),
        "options": dict(options or {}),
        "targets": dict(targets),
        "metrics": list(METRICS),
        "backends": backends,
    }


def describe_machine() -> str:
    """Cores, CPU model and Python version of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def progress_line(done: int, total: int, label: str, *, width: int = 30) -> str:
    """One progress-bar line: ``[#####.....] 12/40 label`` (pure).

    Args:
        done: Steps finished.
        total: Steps in all (at least 1 is assumed).
        label: What is running.
        width: Characters inside the brackets.
    """
    total = max(total, 1)
    done = min(max(done, 0), total)
    filled = round(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


class Progress:
    """A progress bar redrawn in place on a text stream (stderr by default).

    Args:
        total: Steps expected.
        stream: Where to draw; None draws nothing.
    """

    def __init__(self, total: int, stream: IO[str] | None = sys.stderr) -> None:
        """Create the bar with ``total`` steps."""
        self.total = total
        self.done = 0
        self._stream = stream
        self._last = 0

    def step(self, label: str, n: int = 1) -> None:
        """Count ``n`` finished steps and redraw with ``label``."""
        self.done += n
        self.show(label)

    def show(self, label: str) -> None:
        """Redraw without counting a step."""
        if self._stream is None:
            return
        line = progress_line(self.done, self.total, label)
        pad = " " * max(0, self._last - len(line))
        self._last = len(line)
        self._stream.write(f"\r{line}{pad}")
        self._stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._stream is not None and self._last:
            self._stream.write("\n")
            self._stream.flush()


# ----------------------------------------------------------------------- options
@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What :func:`run_bench` measures.

    Attributes:
        backends: Backends to measure, in order.
        queries: Warm queries per configuration (after the cold one).
        load_seconds: The emulator's model load (10 s in the realistic profile).
        first_token_seconds: The emulator's time to first token.
        tokens_per_second: The emulator's generation speed.
        answer_tokens: Tokens per emulated answer.
        local_max_tokens: Bound of the local model's answers.
        configs: Configurations to measure (default: all six).
        sequential: Run the emulator's configurations one after another.
    """

    backends: tuple[str, ...] = BACKENDS
    queries: int = 10
    load_seconds: float = 10.0
    first_token_seconds: float = 0.3
    tokens_per_second: float = 30.0
    answer_tokens: int = 30
    local_max_tokens: int = 32
    configs: tuple[BenchConfig, ...] = CONFIGS
    sequential: bool = False

    def emulator_title(self) -> str:
        """The emulator table's title, naming the profile and how it ran."""
        scaled = "" if self.load_seconds == 10.0 else " (SCALED from the realistic 10 s)"
        how = "one after another" if self.sequential else "concurrently, one emulator each"
        return (
            f"emulator: model load {self.load_seconds:g} s{scaled}, first token "
            f"{self.first_token_seconds * 1000:g} ms, {self.tokens_per_second:g} tokens/s, "
            f"{self.answer_tokens}-token answers; {self.queries} warm queries per config, "
            f"configs run {how}"
        )

    def local_title(self) -> str:
        """The local table's title."""
        return (
            "local: Gemma 3 270M (Q4_K_M) under llama-server on this CPU, answers bounded to "
            f"{self.local_max_tokens} tokens; pipeline strategies few_shot_answer, direct; "
            f"{self.queries} warm queries per config, a fresh server per config"
        )

    def steps(self) -> int:
        """Progress steps of a run: per backend and configuration, its queries plus two."""
        return len(self.backends) * len(self.configs) * (self.queries + 2)

    def as_dict(self) -> dict[str, Any]:
        """The options for the JSON report."""
        return {
            "backends": list(self.backends),
            "queries": self.queries,
            "load_seconds": self.load_seconds,
            "first_token_seconds": self.first_token_seconds,
            "tokens_per_second": self.tokens_per_second,
            "answer_tokens": self.answer_tokens,
            "local_max_tokens": self.local_max_tokens,
            "configs": [c.name for c in self.configs],
            "sequential": self.sequential,
        }


# ----------------------------------------------------------------------- plotting
def plot_report(
    reports: Sequence[BackendReport],
    path: str | os.PathLike[str],
    targets: Mapping[str, float] = TARGETS,
) -> None:
    """Bar charts of every metric, configurations side by side, target lines dashed.

    Args:
        reports: The measured backends (skipped ones are left out).
        path: The PNG file to write.
        targets: Target of each metric (drawn as a dashed line).

    Raises:
        ConfigError: matplotlib is not installed (``pip install 'langchain-fastpipe[plot]'``).
    """
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'langchain-fastpipe[plot]' (or matplotlib)"
        ) from None
    measured = [r for r in reports if not r.skipped and r.results]
    fig, axes = plt.subplots(
        max(1, len(measured)),
        len(METRICS),
        figsize=(4 * len(METRICS), 3.6 * max(1, len(measured))),
        squeeze=False,
    )
    for row, report in enumerate(measured):
        names = [r.config for r in report.results]
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            values = [r.metrics.get(metric) for r in report.results]
            heights = [v if v is not None else 0.0 for v in values]
            colors = [
                "tab:gray" if v is None else ("tab:green" if v < targets[metric] else "tab:red")
                for v in values
            ]
            ax.bar(range(len(names)), heights, color=colors)
            ax.axhline(targets[metric], linestyle="--", color="black", linewidth=1)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
            ax.set_title(f"{report.backend}: {_METRIC_LABELS[metric]}", fontsize=9)
    fig.suptitle("fastpipe bench (dashed: target; green: meets it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)
