"""The ``fastpipe`` command over the wire: demo, ask, stats, argument pass-through."""

from __future__ import annotations

import json
import re

import pytest

from langchain_fastpipe import cli


def test_demo_on_the_emulator_streams_answers_and_shows_preloading(capsys) -> None:
    assert cli.main(["demo", "--backend", "emulator", "--load-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "first query without preloading" in out
    assert re.search(r"preloaded .*: ok in", out)
    assert out.count("(time to first chunk:") == len(cli.DEMO_QUESTIONS)
    assert "streams of emulated-model:" in out
    # The pool line proves the answers went through one shared, reused connection.
    pool = re.search(r"(\d+) requests, (\d+) connections opened", out)
    assert pool is not None
    assert int(pool.group(2)) == 1
    assert int(pool.group(1)) > 1


@pytest.mark.real_model
def test_demo_on_the_real_local_model_answers(capsys) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Gemma 3 270M" in out
    assert "Paris" in out
    assert "first query after preloading" in out


def test_ask_streams_one_answer_from_the_emulator(capsys) -> None:
    assert cli.main(["ask", "--backend", "emulator", "Why is the sky blue?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: Why is the sky blue?\nA: ")
    assert len(out.splitlines()[1]) > len("A: ")


def test_ask_against_a_given_server(emulator, capsys) -> None:
    code = cli.main(["ask", "--base-url", f"{emulator.base_url}/v1", "--model", "m", "Hello?"])
    assert code == 0
    assert capsys.readouterr().out.startswith("Q: Hello?\nA: ")


def test_stats_prints_this_processs_json_and_prometheus(emulator, capsys) -> None:
    from langchain_fastpipe import ChatFastpipe

    endpoint = f"{emulator.base_url}/v1"
    model = ChatFastpipe(model="stats-cli", base_url=endpoint, api_key="k")
    model.invoke("hi")  # the model holds its pool (and its statistics) while it lives
    assert cli.main(["stats"]) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["pools"][endpoint]["requests"] >= 1
    assert cli.main(["stats", "--prometheus"]) == 0
    text = capsys.readouterr().out
    assert "# TYPE fastpipe_pool_requests_total counter" in text
    assert f'fastpipe_pool_requests_total{{endpoint="{endpoint}"}}' in text
    assert "# TYPE fastpipe_breaker_state gauge" in text  # a state set, one sample per state
    assert f'fastpipe_breaker_state{{endpoint="{endpoint}",fastpipe_breaker_state="closed"' in text


def test_stats_metrics_lists_every_declared_family(capsys) -> None:
    assert cli.main(["stats", "--metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines}
    assert rows["pool_requests"] == "counter"
    assert rows["pool_latency_seconds"] == "histogram"
    assert rows["breaker_state"] == "state"
    assert rows["preload_model_status"] == "state"


def test_bench_and_emulate_receive_their_options_untouched(monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setitem(cli._PASSTHROUGH, "bench", lambda ns: seen.append(ns.rest) or 0)
    assert cli.main(["bench", "--quick", "--backend", "emulator"]) == 0
    assert cli.main(["bench", "--", "--quick"]) == 0
    assert seen == [["--quick", "--backend", "emulator"], ["--quick"]]


def test_unknown_command_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["fly"])
    assert "invalid choice" in capsys.readouterr().err


def test_stats_url_reads_a_running_emulator(emulator, capsys) -> None:
    assert cli.main(["stats", "--url", f"{emulator.base_url}/_emulator/stats"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["base_url"] == emulator.base_url
    assert data["connections_opened"] >= 1


async def _call_asgi(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    from langchain_fastpipe.prometheus import stats_app

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await stats_app({"type": "http", "path": path, "method": "GET"}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


async def test_stats_app_serves_json_and_prometheus(emulator) -> None:
    from langchain_fastpipe import ChatFastpipe

    model = ChatFastpipe(model="m", base_url=f"{emulator.base_url}/v1", api_key="k")
    await model.ainvoke("hi")  # the model holds its pool (and its statistics) while it lives
    status, headers, body = await _call_asgi("/fastpipe/")
    assert status == 200
    assert headers[b"content-type"] == b"application/json"
    assert f"{emulator.base_url}/v1" in json.loads(body)["pools"]
    status, headers, body = await _call_asgi("/fastpipe/metrics")
    assert headers[b"content-type"].startswith(b"text/plain")
    assert b"fastpipe_pool_requests_total" in body


def test_ask_in_a_fresh_process_leaves_no_unclosed_session() -> None:
    # The model (and its pool) is dropped while asyncio.run's loop still runs: its
    # connections must be closed then, not left to warn at exit.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "langchain_fastpipe.cli", "ask", "--backend", "emulator", "Hi?"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.startswith("Q: Hi?\nA: ")
    assert "Unclosed" not in out.stderr, out.stderr
