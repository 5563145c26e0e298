"""LocalModelServer: the real llama-server (marked real_model) and fake binaries (fast)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import BaseMessage

from langchain_fastpipe import cli
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import LocalServerError
from langchain_fastpipe.local import LocalModelServer, find_binary
from langchain_fastpipe.local._server import build_command, read_log_tail, template_path
from langchain_fastpipe.preload import ModelPreloader
from langchain_fastpipe.prompts import FEW_SHOT_PROMPT


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _group_gone(pgid: int) -> bool:
    """No live process (zombies awaiting their reaper excepted) left in the group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            return False
    return True


def _group_ends(pgid: int, polls: int = 400) -> bool:
    """Whether the group's processes are all gone, allowing the kernel time to deliver
    SIGKILL to its children on a loaded machine (polls, never a timing assertion)."""
    for _ in range(polls):
        if _group_gone(pgid):
            return True
        time.sleep(0.025)
    return False


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------- no model needed
@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-llama-server"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_build_command_is_pure_and_complete() -> None:
    cmd = build_command(
        binary="/bin/llama-server",
        model="/m.gguf",
        host="127.0.0.1",
        port=8081,
        alias="gemma",
        ctx_size=2048,
        threads=2,
        parallel=3,
        chat_template_file="/t.jinja",
        extra_args=["--seed", "1"],
    )
    assert cmd[0] == "/bin/llama-server"

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--model") == "/m.gguf"
    assert value("--port") == "8081"
    assert value("--ctx-size") == "2048"
    assert value("--threads") == "2"
    assert value("--parallel") == "3"
    assert value("--chat-template-file") == "/t.jinja"
    assert "--jinja" in cmd
    assert cmd[-2:] == ["--seed", "1"]


def test_template_is_shipped_and_is_a_gemma_turn_template() -> None:
    text = template_path().read_text()
    assert "<start_of_turn>" in text
    assert "<end_of_turn>" in text
    assert "'model'" in text
    assert "{%- if role == 'model' -%}" in text  # model turns end with a newline


def test_missing_binary_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_model: Path
) -> None:
    monkeypatch.setenv("FASTPIPE_LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(LocalServerError, match=r"LLAMA_SERVER=.*nope is not an executable"):
        find_binary()
    server = LocalModelServer(binary=tmp_path / "absent", model_file=fake_model)
    with pytest.raises(
        LocalServerError, match=r"binary not found at .*absent.*langchain-fastpipe\[local\]"
    ):
        server.start()


def test_missing_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = _script(tmp_path, "exit 0")
    monkeypatch.setenv("FASTPIPE_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    with pytest.raises(LocalServerError, match=r"LOCAL_MODEL=.*missing\.gguf is not a file"):
        LocalModelServer(binary=binary).start()


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(LocalServerError, match="threads must be >= 1, got 0"):
        LocalModelServer(threads=0)
    with pytest.raises(LocalServerError, match=r"port must be in 1\.\.65535"):
        LocalModelServer(port=70000)


def test_server_that_exits_reports_code_and_log_tail(tmp_path: Path, fake_model: Path) -> None:
    binary = _script(tmp_path, 'echo "error: unknown argument: $3"; echo boom-line >&2; exit 3')
    server = LocalModelServer(binary=binary, model_file=fake_model, log_path=tmp_path / "s.log")
    with pytest.raises(LocalServerError) as info:
        server.start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "boom-line" in message  # stderr goes to the log too
    assert info.value.log_path == str(tmp_path / "s.log")
    assert server.pid is None
    assert "boom-line" in read_log_tail(tmp_path / "s.log")


def test_unhealthy_server_times_out_and_is_killed_with_its_group(
    tmp_path: Path, fake_model: Path
) -> None:
    # Ignores SIGTERM, so stop() must escalate to SIGKILL on the whole group.
    binary = _script(tmp_path, "trap '' TERM; echo starting; while true; do sleep 0.2; done")
    ticks = iter([0.0, 0.0, 0.0, 1e9, 1e9, 1e9])
    server = LocalModelServer(
        binary=binary,
        model_file=fake_model,
        startup_timeout=30,
        stop_timeout=0.5,
        clock=lambda: next(ticks, 1e9),
    )
    seen: dict[str, int] = {}
    original = server._launch

    def launch(*args: object) -> object:
        proc = original(*args)  # type: ignore[arg-type]
        seen["pid"] = proc.pid
        return proc

    server._launch = launch  # type: ignore[method-assign]
    with pytest.raises(
        LocalServerError, match=r"not healthy within 30s at http://127\.0\.0\.1:\d+"
    ):
        server.start()
    assert _gone(seen["pid"])
    assert _group_ends(seen["pid"])
    assert not server.is_running


async def test_cancelled_astart_stops_the_half_started_process(
    tmp_path: Path, fake_model: Path
) -> None:
    binary = _script(tmp_path, "exec sleep 30")
    server = LocalModelServer(binary=binary, model_file=fake_model)
    task = asyncio.create_task(server.astart())
    for _ in range(200):
        if server.pid is not None:
            break
        await asyncio.sleep(0.01)
    pid = server.pid
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.pid is None
    assert _gone(pid)


def test_server_dropped_without_stop_is_stopped_at_interpreter_exit(
    tmp_path: Path, fake_model: Path
) -> None:
    binary = _script(tmp_path, "exec sleep 60")
    program = f"""
import gc
from langchain_fastpipe.local import LocalModelServer
server = LocalModelServer(binary={str(binary)!r}, model_file={str(fake_model)!r})
proc = server._launch(*server._resolve())
print(proc.pid, flush=True)
del server, proc
gc.collect()  # a weak registry would forget the server here
"""
    done = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(done.stdout.split()[0])
    if not _group_ends(pid):  # the atexit hook must have signalled the group
        os.killpg(pid, signal.SIGKILL)
        pytest.fail(f"llama-server stand-in {pid} outlived the interpreter that started it")


# --------------------------------------------------------------------------- the real model
real = pytest.mark.real_model


@pytest.fixture(scope="module")
def llama() -> Iterator[LocalModelServer]:
    try:
        find_binary()
    except LocalServerError as exc:
        pytest.fail(f"llama-server not installed (make test installs it): {exc}")
    with LocalModelServer(parallel=2, ctx_size=4096) as server:
        yield server


def _chat(server: LocalModelServer, **payload: object) -> dict[str, object]:
    body = {"model": server.model, "temperature": 0, **payload}
    reply = httpx.post(f"{server.openai_base_url}/chat/completions", json=body, timeout=60)
    reply.raise_for_status()
    data: dict[str, object] = reply.json()
    return data


@real
def test_start_health_and_stop_leave_no_orphan(tmp_path: Path) -> None:
    server = LocalModelServer(log_path=tmp_path / "llama.log")
    with server:
        pid, port = server.pid, server.port
        assert pid is not None
        assert server.is_running
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        assert "running" in repr(server)
        models = httpx.get(f"{server.openai_base_url}/models").json()
        assert any(server.model in (m.get("aliases") or [m["id"]]) for m in models["data"])
    assert _gone(pid)
    assert _group_ends(pid)
    assert _port_closed(port)
    assert not server.is_running
    assert server.log_tail()  # the server logged to its file
    server.stop()  # idempotent


@real
async def test_async_context_manager(tmp_path: Path) -> None:
    async with LocalModelServer(log_path=tmp_path / "a.log", parallel=1) as server:
        pid = server.pid
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.base_url}/health")).status_code == 200
    assert pid is not None
    assert _gone(pid)


@real
def test_few_shot_prompt_answers_paris_with_newline_stop(llama: LocalModelServer) -> None:
    data = _chat(
        llama,
        max_tokens=16,
        stop=["\n"],
        messages=[
            {"role": "system", "content": "Answer with the city name only."},
            {"role": "user", "content": "What is the capital of Germany?"},
            {"role": "assistant", "content": "Berlin"},
            {"role": "user", "content": "What is the capital of Spain?"},
            {"role": "assistant", "content": "Madrid"},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )
    choice = data["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"].strip().startswith("Paris")
    assert "\n" not in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"


@real
def test_system_message_is_folded_into_the_first_user_turn(llama: LocalModelServer) -> None:
    reply = httpx.post(
        f"{llama.base_url}/apply-template",
        json={
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ]
        },
    )
    assert reply.json()["prompt"] == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello\n<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@real
def test_json_schema_structured_output(llama: LocalModelServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    data = _chat(
        llama,
        max_tokens=48,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        messages=[
            {
                "role": "user",
                "content": "Alice is 31 years old. Give her as JSON with name and age.",
            },
        ],
    )
    content = data["choices"][0]["message"]["content"]  # type: ignore[index]
    person = json.loads(content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str)
    assert isinstance(person["age"], int)
    assert person == {"name": "Alice", "age": 31}


@real
def test_sigterm_alone_stops_the_real_server(tmp_path: Path) -> None:
    server = LocalModelServer(log_path=tmp_path / "t.log", parallel=1, stop_timeout=30)
    server.start()
    pid = server.pid
    assert pid is not None
    sent: list[int] = []
    original = signal.Signals

    import langchain_fastpipe.local._server as mod

    real_signal_group = mod._signal_group

    def spy(proc: object, sig: signal.Signals) -> None:
        sent.append(int(sig))
        real_signal_group(proc, sig)  # type: ignore[arg-type]

    mod._signal_group = spy  # type: ignore[assignment]
    try:
        server.stop()
    finally:
        mod._signal_group = real_signal_group
    assert sent == [int(original.SIGTERM)]  # it shut down cleanly, no SIGKILL needed
    assert _gone(pid)


# --------------------------------------------------------------------------- clean answers
@real
def test_demo_prints_clean_answers(capsys: pytest.CaptureFixture[str]) -> None:
    # `make demo`: the few-shot chat prompt, temperature 0, a newline stop. With model turns
    # ending in <end_of_turn> right after the answer, the base model printed "Parisłę".
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    answers = re.findall(r"^A: (.*)$", out, flags=re.MULTILINE)
    # Exact: clean, not necessarily right (the 270M model's answer to the second one is
    # Earth; benchmarks/bench_quality.py measures how often it is right).
    assert answers == ["Paris", "Earth", "Shakespeare"]
    assert "preloaded openai:gemma-3-270m" in out


@real
def test_few_shot_answers_are_clean_through_any_openai_client(llama: LocalModelServer) -> None:
    # The fix is the server's template, so raw HTTP clients (curl, ChatOpenAI) get it too.
    rendered = FEW_SHOT_PROMPT.format_messages(question="What is the capital of Japan?")
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    messages = [{"role": roles[m.type], "content": m.content} for m in rendered]
    data = _chat(llama, max_tokens=16, stop=["\n"], messages=messages)
    choice = data["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"] == "Tokyo"
    assert choice["finish_reason"] == "stop"  # the newline came: the answer ended by itself


# --------------------------------------------------------------------------- warm start
def _prompt_tokens(server: LocalModelServer, messages: list[BaseMessage]) -> list[int]:
    """The token ids llama-server evaluates for ``messages`` (its template, its tokenizer)."""
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    wire = [{"role": roles[m.type], "content": m.content} for m in messages]
    prompt = httpx.post(f"{server.base_url}/apply-template", json={"messages": wire}).json()
    tokens = httpx.post(
        f"{server.base_url}/tokenize",
        json={"content": prompt["prompt"], "add_special": True, "parse_special": True},
    ).json()["tokens"]
    return [int(t) for t in tokens]


async def _first_query_cache(*, with_prompt: bool) -> tuple[int, int, int]:
    """Preload a fresh server (default 4 slots) and its chat model, ask one question.

    Returns the prompt tokens the server reused for that first query (its
    ``cached_tokens``), the prompt's length and the length of the prefix it shares
    with the warm-up prompt, both counted with the server's own tokenizer.
    """
    server = LocalModelServer()
    pre = ModelPreloader()
    pre.register(server)
    (started,) = await pre.preload()
    assert started.ok, started.error
    llm = ChatFastpipe(
        model=server.model,
        base_url=server.openai_base_url,
        api_key="not-needed",
        temperature=0,
        max_tokens=8,
        stop=["\n"],
    )
    try:
        pre.register(llm, prompt=FEW_SHOT_PROMPT if with_prompt else None)
        (warmed,) = await pre.preload([pre.names()[-1]])
        assert warmed.ok, warmed.error
        question = {"question": "What is the capital of France?"}
        reply = await (FEW_SHOT_PROMPT | llm).ainvoke(question)
        assert reply.content == "Paris"
        usage = reply.usage_metadata
        assert usage is not None
        cached = usage.get("input_token_details", {}).get("cache_read")
        assert cached is not None
        query = _prompt_tokens(server, FEW_SHOT_PROMPT.format_messages(**question))
        warm = _prompt_tokens(server, FEW_SHOT_PROMPT.format_messages(question=""))
        shared = next(
            (i for i, (a, b) in enumerate(zip(query, warm, strict=False)) if a != b),
            min(len(query), len(warm)),
        )
        assert usage["input_tokens"] == len(query)
        return cached, len(query), shared
    finally:
        await pre.aclose()


@real
async def test_warmup_with_the_app_prompt_leaves_its_prefix_in_the_prompt_cache() -> None:
    cached, total, shared = await _first_query_cache(with_prompt=True)
    # The whole prefix before the question (~80% of the prompt) came from the cache,
    # counted by llama-server; only the question's tokens were evaluated.
    assert shared > total * 0.7
    assert cached == shared
    # The generic warm-up ("hi" in another slot) leaves nothing the first query can reuse.
    cached_without, total_without, _ = await _first_query_cache(with_prompt=False)
    assert total_without == total
    assert cached_without < 5
