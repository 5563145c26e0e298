"""Smoke test of ``fastpipe bench`` over the wire: emulators on 127.0.0.1, a tiny model load."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from langchain_fastpipe._bench.results import CONFIGS, METRICS
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


def _load_fast_server() -> Any:
    """``benchmarks/_fast_server.py`` (the benchmarks folder is not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_fast_server.py"
    spec = importlib.util.spec_from_file_location("_fast_server", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_fast_server", module)
    spec.loader.exec_module(module)
    return module


async def test_fast_server_answers_chatfastpipe_exactly() -> None:
    """The fast benchmark server (uvicorn + httptools, own process) speaks both wire formats.

    The full ``bench_fastserver.py --quick`` takes about a minute, too long here; this keeps
    its server honest: exact text, usage, both providers, streamed and not, both engines.
    """
    from langchain_core.messages import AIMessageChunk

    from langchain_fastpipe import ChatFastpipe, aclose_pools

    fast = _load_fast_server()
    n = 7
    text = "".join(fast._token(i) for i in range(n))
    with fast.fast_server(delay_ms=1.0, tokens=n) as server:
        assert (server.loop == "uvloop") == (importlib.util.find_spec("uvloop") is not None)
        cpu = server.cpu()
        assert cpu >= 0.0
        try:
            for provider, base in (("openai", f"{server.base}/v1"), ("ollama", server.base)):
                for engine in ("auto", "httpx", "aiohttp"):
                    model = ChatFastpipe(
                        model="bench@0ms", provider=provider, base_url=base, api_key="k",
                        max_tokens=n, engine=engine,
                    )  # fmt: skip
                    reply = await model.ainvoke("hi")
                    assert reply.content == text, (provider, engine)
                    merged: AIMessageChunk | None = None
                    async for chunk in model.astream("hi"):
                        merged = chunk if merged is None else merged + chunk
                    assert merged is not None
                    assert merged.content == text, (provider, engine)
                    assert merged.usage_metadata is not None
                    assert merged.usage_metadata["output_tokens"] == n, (provider, engine)
        finally:
            await aclose_pools()
        assert server.cpu() >= cpu
