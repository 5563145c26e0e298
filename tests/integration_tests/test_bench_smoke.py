"""Smoke test of ``fastpipe bench`` over the wire: emulators on 127.0.0.1, a tiny model load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langchain_fastpipe.bench import CONFIGS, METRICS
from langchain_fastpipe.cli import main as cli_main


def test_fastpipe_bench_emulator_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    # "--": the fastpipe parser (cli.py) does not forward options after "bench" otherwise.
    argv = ["bench", "--", "--backend", "emulator", "--quick", "--load-seconds", "0.2"]
    argv += ["--json", str(out), "--plot", str(png)]
    assert cli_main(argv) == 0

    printed = capsys.readouterr()
    assert "### emulator: model load 0.2 s (SCALED" in printed.out
    for cfg in CONFIGS:
        assert f"| {cfg.name}" in printed.out
    assert "30/30 backend=emulator" in printed.err  # progress bar: 6 configs x (3 + 2) steps
    assert png.read_bytes()[:4] == b"\x89PNG"

    data = json.loads(out.read_text())
    assert set(data["backends"]) == {"emulator"}
    configs = data["backends"]["emulator"]["configs"]
    assert list(configs) == [c.name for c in CONFIGS]
    for name, result in configs.items():
        assert result["errors"] == 0, (name, result["error_samples"])
        assert result["queries"] == 3
        assert set(result["metrics"]) == set(METRICS)
        assert all(value is not None and value > 0 for value in result["metrics"].values()), name
        assert set(result["pass"]) == set(METRICS)

    # Preloading moved the model load out of the first query: counted by the emulator.
    for name, result in configs.items():
        loads = result["loads_in_first_query"]
        if result["flags"]["enable_model_preloading"]:
            assert loads == 0, name
            assert result["preload_seconds"] is not None
        else:
            assert loads == 1, name
    assert (
        configs["baseline"]["loads_in_first_query"] > configs["preloading"]["loads_in_first_query"]
    )

    # Streaming off: the first chunk is the whole answer (one chunk); on: many.
    for name, result in configs.items():
        if result["flags"]["enable_response_streaming"]:
            assert result["text_chunks"] > 1, name
        else:
            assert result["text_chunks"] == 1, name


def test_fastpipe_bench_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--backend", "emulator", "--queries", "1", "--load-seconds", "0", "--json"]
    argv += ["--no-progress"]
    from langchain_fastpipe.bench import main

    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert captured.err == ""
    assert data["options"]["queries"] == 1
    assert len(data["backends"]["emulator"]["configs"]) == len(CONFIGS)
