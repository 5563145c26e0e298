"""Unit tests of the pure parts of ``fastpipe bench``: statistics, verdicts, table, JSON."""

from __future__ import annotations

import ast
import inspect
import io
import json

import pytest

from langchain_fastpipe import bench
from langchain_fastpipe._bench import command, results, run
from langchain_fastpipe._bench.results import (
    CONFIGS,
    METRICS,
    TARGETS,
    BackendReport,
    BenchConfig,
    ConfigResult,
    Progress,
    QuerySample,
    evaluate,
    progress_line,
    render_table,
    report_json,
    summarize,
)
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.stats import quantile


def _result(name: str = "baseline", **metrics: float | None) -> ConfigResult:
    cfg = next(c for c in CONFIGS if c.name == name)
    values: dict[str, float | None] = {"first_query": 1.0, "average": 2.0, "p95": 3.0, "ttfc": 0.5}
    values.update(metrics)
    return ConfigResult(
        config=name,
        flags=cfg.flags(),
        metrics=values,
        queries=5,
        errors=0,
        loads_in_first_query=1,
        text_chunks=1.0,
    )


# ---------------------------------------------------------------- configurations
def test_configs_are_baseline_each_alone_and_all_on() -> None:
    names = [c.name for c in CONFIGS]
    assert names == [
        "baseline",
        "preloading",
        "pooling",
        "streaming",
        "optimized_pipeline",
        "all_on",
    ]
    on_counts = [sum(c.flags().values()) for c in CONFIGS]
    assert on_counts == [0, 1, 1, 1, 1, 4]
    assert CONFIGS[1].flags()["enable_model_preloading"]
    assert CONFIGS[2].flags()["enable_connection_pooling"]
    assert CONFIGS[3].flags()["enable_response_streaming"]
    assert CONFIGS[4].flags()["enable_optimized_pipeline"]


def test_fastpipe_config_applies_the_flags_and_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FASTPIPE_ENABLE_CONNECTION_POOLING", "true")
    cfg = BenchConfig(name="x", streaming=True).fastpipe_config("http://127.0.0.1:9/v1", "m")
    assert cfg.flags["enable_response_streaming"] is True
    assert cfg.flags["enable_connection_pooling"] is False
    assert cfg.flags["enable_model_preloading"] is False
    model = ChatFastpipe.from_config(cfg, preload=False)
    assert model.pooling is False
    assert model.streaming is True
    assert "not-needed" not in repr(cfg)


def test_short_flags() -> None:
    assert CONFIGS[0].short_flags() == "----"
    assert CONFIGS[-1].short_flags() == "PCSO"
    assert BenchConfig(name="x", streaming=True).short_flags() == "--S-"


# ---------------------------------------------------------------- statistics
def test_quantile_interpolates() -> None:
    assert quantile([], 0.95) is None
    assert quantile([4.0], 0.95) == 4.0
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert quantile(list(range(101)), 0.95) == pytest.approx(95.0)


def test_quantile_rejects_bad_q() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        quantile([1.0], 1.5)


def test_bench_takes_its_prompt_from_the_neutral_module_not_the_cli() -> None:
    from langchain_fastpipe import cli, prompts

    imported = {
        node.module
        for module in (bench, command, results, run)
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.ImportFrom)
    }
    assert "langchain_fastpipe.cli" not in imported  # the library never depends on the CLI
    assert "langchain_fastpipe.prompts" in imported
    assert cli.FEW_SHOT_PROMPT is prompts.FEW_SHOT_PROMPT  # still importable from the CLI
    assert prompts.FEW_SHOT_PROMPT.input_variables == ["question"]


def test_summarize_uses_warm_queries_and_counts_failures() -> None:
    cold = QuerySample(total=12.0, ttfc=11.0, chunks=1)
    warm = [
        QuerySample(total=2.0, ttfc=0.5, chunks=10),
        QuerySample(total=4.0, ttfc=1.5, chunks=20),
        QuerySample(total=9.0, ttfc=None, chunks=0, error="ServerError: boom"),
        QuerySample(total=1.0, ttfc=None, chunks=0),  # empty answer
    ]
    result = summarize(CONFIGS[3], cold, warm, loads_in_first_query=1, preload_seconds=None)
    assert result.metrics["first_query"] == 12.0
    assert result.metrics["average"] == pytest.approx(3.0)
    assert result.metrics["p95"] == pytest.approx(2.0 + 2.0 * 0.95)
    assert result.metrics["ttfc"] == pytest.approx(1.0)
    assert result.queries == 4
    assert result.errors == 2
    assert result.text_chunks == pytest.approx(15.0)
    assert result.error_samples == ("ServerError: boom", "empty answer")
    assert result.loads_in_first_query == 1


def test_summarize_failed_cold_query_has_no_first_query() -> None:
    cold = QuerySample(total=1.0, ttfc=None, chunks=0, error="EndpointConnectError: refused")
    result = summarize(CONFIGS[0], cold, [])
    assert result.metrics == {"first_query": None, "average": None, "p95": None, "ttfc": None}
    assert result.errors == 1
    assert result.text_chunks is None


def test_shifted_adds_to_both_times() -> None:
    sample = QuerySample(total=1.0, ttfc=0.25, chunks=3).shifted(2.0)
    assert (sample.total, sample.ttfc, sample.chunks) == (3.0, 2.25, 3)
    assert QuerySample(total=1.0, ttfc=None, chunks=0).shifted(1.0).ttfc is None


# ---------------------------------------------------------------- verdicts
def test_targets_are_the_reports_success_criteria() -> None:
    assert dict(TARGETS) == {"first_query": 5.0, "average": 8.0, "p95": 10.0, "ttfc": 2.0}
    assert set(TARGETS) == set(METRICS)


def test_evaluate_is_strictly_below_target() -> None:
    verdict = evaluate({"first_query": 4.99, "average": 8.0, "p95": 12.0, "ttfc": None})
    assert verdict == {"first_query": True, "average": False, "p95": False, "ttfc": None}
    assert results.all_pass(verdict) is False
    assert results.all_pass(evaluate({"first_query": 1, "average": 1, "p95": 1, "ttfc": 1}))
    assert results.all_pass({}) is False


# ---------------------------------------------------------------- rendering
def test_render_table_has_every_config_metric_and_verdict() -> None:
    report = BackendReport(
        backend="emulator",
        title="emulator: test",
        results=[_result(c.name) for c in CONFIGS[:-1]]
        + [_result("all_on", first_query=43.0, ttfc=None)],
    )
    text = render_table(report)
    lines = text.splitlines()
    assert lines[0] == "### emulator: test"
    header = next(line for line in lines if line.startswith("| config"))
    for label in ("first query s", "average s", "p95 s", "TTFC s", "targets"):
        assert label in header
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| config")]
    assert [r.split("|")[1].strip() for r in rows] == [c.name for c in CONFIGS]
    assert rows[0].rstrip(" |").endswith("PASS")
    assert "43.00 FAIL" in rows[-1]
    assert "n/a" in rows[-1]
    assert rows[-1].rstrip(" |").endswith("FAIL")
    assert "PCSO" in rows[-1]
    # every table row has the same width (aligned columns)
    widths = {len(line) for line in lines if line.startswith("|")}
    assert len(widths) == 1


def test_render_table_skipped_backend() -> None:
    report = BackendReport(backend="local", title="local", skipped="binary missing")
    assert render_table(report).endswith("skipped: binary missing")


def test_render_table_lists_errors() -> None:
    result = _result()
    result = ConfigResult(**{**result.__dict__, "errors": 1, "error_samples": ("X: y",)})
    text = render_table(BackendReport(backend="emulator", title="t", results=[result]))
    assert "error in baseline: X: y" in text


def test_report_json_shape() -> None:
    reports = [
        BackendReport(
            backend="emulator",
            title="t",
            profile={"load_seconds": 10.0},
            results=[_result(c.name, p95=11.0 if c.name == "baseline" else 3.0) for c in CONFIGS],
        ),
        BackendReport(backend="local", title="l", skipped="no binary"),
    ]
    data = report_json(reports, options={"queries": 5}, machine="test machine")
    data = json.loads(json.dumps(data))  # serializable
    assert data["schema"] == 1
    assert data["machine"] == "test machine"
    assert data["metrics"] == list(METRICS)
    assert data["targets"]["ttfc"] == 2.0
    assert data["options"] == {"queries": 5}
    emulator = data["backends"]["emulator"]
    assert set(emulator["configs"]) == {c.name for c in CONFIGS}
    baseline = emulator["configs"]["baseline"]
    assert set(baseline["metrics"]) == set(METRICS)
    assert baseline["pass"]["p95"] is False
    assert baseline["all_pass"] is False
    assert emulator["configs"]["all_on"]["all_pass"] is True
    assert baseline["flags"]["enable_model_preloading"] is False
    assert data["backends"]["local"] == {
        "title": "l",
        "profile": {},
        "skipped": "no binary",
        "configs": {},
    }


# ---------------------------------------------------------------- progress bar
def test_progress_line() -> None:
    assert progress_line(0, 4, "x", width=8) == "[........] 0/4 x"
    assert progress_line(2, 4, "config=pooling", width=8) == "[####....] 2/4 config=pooling"
    assert progress_line(9, 4, "x", width=4) == "[####] 4/4 x"
    assert progress_line(0, 0, "x", width=2) == "[..] 0/1 x"


def test_progress_redraws_in_place() -> None:
    out = io.StringIO()
    bar = Progress(2, out)
    bar.step("first-long-label")
    bar.step("b")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "1/2 first-long-label" in text
    assert "2/2 b" in text
    assert text.endswith("\n")
    silent = Progress(2, None)
    silent.step("x")
    assert silent.done == 1


# ---------------------------------------------------------------- options
def test_options_from_args() -> None:
    parser = command.build_parser()
    quick = command.options_from_args(parser.parse_args(["--quick", "--backend", "emulator"]))
    assert quick.queries == 3
    assert quick.backends == ("emulator",)
    full = command.options_from_args(parser.parse_args([]))
    assert full.queries == 10
    assert full.backends == ("emulator", "local")
    assert full.load_seconds == 10.0
    assert "SCALED" not in full.emulator_title()
    scaled = command.options_from_args(parser.parse_args(["--load-seconds", "0.5"]))
    assert "SCALED" in scaled.emulator_title()
    with pytest.raises(ConfigError, match="--queries"):
        command.options_from_args(parser.parse_args(["--queries", "0"]))


def test_main_rejects_bad_queries(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--queries", "0"]) == 2
    assert "--queries must be >= 1" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: pytest.TempPathFactory) -> None:
    pytest.importorskip("matplotlib")
    report = BackendReport(
        backend="emulator", title="t", results=[_result(c.name) for c in CONFIGS]
    )
    path = tmp_path / "bench.png"  # type: ignore[operator]
    results.plot_report([report], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
