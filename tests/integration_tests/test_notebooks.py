"""The notebooks under ``notebooks/`` run top to bottom against the embedded backends.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (the kernelspec of this
interpreter, i.e. the project's ``.venv``), with ``cwd=notebooks/`` and ``MPLBACKEND=Agg``. The
selected notebooks run concurrently (one kernel each) in a session fixture, because they mostly
wait on emulated delays; each test then checks one notebook's outputs. Also checked: the stored
notebooks have their outputs cleared, and the fake API key the notebooks use never appears in an
output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: The fake key every notebook passes as ``api_key``; it must never reach an output.
FAKE_KEY = "sk-fastpipe-NOTEBOOK-fake-key-0451"
CELL_TIMEOUT = 120
#: Notebooks that start the real local model (llama-server + Gemma 3 270M).
REAL_MODEL = frozenset({"01_quickstart.ipynb", "04_preloading_and_config.ipynb"})
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_answer_pipeline.ipynb",
    "03_baseline_vs_optimized.ipynb",
    "04_preloading_and_config.ipynb",
)
# Variables that locate the local model stay; other FASTPIPE_* settings of this machine
# (FASTPIPE_PRELOAD, FASTPIPE_CONFIG, ...) must not change what the notebooks do.
_KEEP_ENV = frozenset({"FASTPIPE_LLAMA_SERVER", "FASTPIPE_LOCAL_MODEL"})


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.real_model) if name in REAL_MODEL else name
        for name in NOTEBOOKS
    ]


def kernel_env() -> dict[str, str]:
    """The environment of the notebook kernels: headless plots, loopback never proxied."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPIPE_") or k in _KEEP_ENV}
    env.pop("OPENAI_API_KEY", None)
    env.update(MPLBACKEND="Agg", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


@dataclass
class Executed:
    """One executed notebook, or why it failed."""

    notebook: NotebookNode
    error: BaseException | None


async def _execute(path: Path) -> Executed:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        await client.async_execute(env=kernel_env())
    except Exception as exc:  # reported by the test of this notebook
        return Executed(notebook, exc)
    return Executed(notebook, None)


async def _execute_all(names: list[str]) -> dict[str, Executed]:
    done = await asyncio.gather(*(_execute(NOTEBOOKS_DIR / n) for n in names))
    return dict(zip(names, done, strict=True))


@pytest.fixture(scope="session")
def executed(request: pytest.FixtureRequest) -> dict[str, Executed]:
    """Every notebook selected in this session, executed concurrently (one kernel each)."""
    here = Path(__file__).resolve()
    wanted = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if Path(str(item.path)).resolve() == here
            and getattr(item, "originalname", "") == "test_notebook_runs"
            and hasattr(item, "callspec")
        }
    )
    return asyncio.run(_execute_all(wanted))


def outputs_of(notebook: NotebookNode) -> list[dict[str, Any]]:
    """Every output of every code cell."""
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def output_text(notebook: NotebookNode) -> str:
    """All text of the outputs: streams, text/plain results, error names and tracebacks."""
    parts: list[str] = []
    for out in outputs_of(notebook):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.extend(str(v) for k, v in out["data"].items() if k.startswith("text/"))
        elif out["output_type"] == "error":
            parts.extend([out["ename"], out["evalue"], *out["traceback"]])
    return "\n".join(parts)


def png_count(notebook: NotebookNode) -> int:
    """How many PNG images the notebook displayed."""
    return sum(1 for out in outputs_of(notebook) if "image/png" in out.get("data", {}))


#: Per notebook: patterns its executed output must contain, and the least number of plots.
EXPECTED: dict[str, tuple[tuple[str, ...], int]] = {
    "01_quickstart.ipynb": (
        (
            r"ainvoke: \S+",
            r"STREAMED ANSWER: \w+( \w+)+\.",
            r"time to first chunk: \d+ ms, whole answer: \d+ ms",
            r"model emulated-model: first token after \d+ ms",
            r"GEMMA STREAMED: Paris",
            r"GEMMA INVOKE: \S+",
            r"SecretStr\('\*+'\)",
            r"stopped: True",
        ),
        1,
    ),
    "02_answer_pipeline.ipynb": (
        (
            r"strategies: \['structured', 'direct', 'few_shot'\]",
            r"astream:\s*\w+",
            r"LEADER AFTER 100 REQUESTS: steady",
            r"ranked \(optimized\)\s+attempts per answer \d\.\d\d",
            r"fixed order\s+attempts per answer \d\.\d\d",
            r"ranked\.strategies: 100 requests",
        ),
        2,
    ),
    "03_baseline_vs_optimized.ipynb": (
        (
            r"baseline\s+\{'enable_model_preloading': False",
            r"optimized: preloaded \[\('openai:thorough', 'ok'\), \('openai:quick', 'ok'\)\]",
            r"first query, cold \(s\)\s+\d+\.\d{3}\s+\d+\.\d{3}",
            r"time to first chunk \(s\)\s+\d+\.\d{3}\s+\d+\.\d{3}",
            r"chunks per answer\s+1\.000\s+\d+\.\d{3}",
            r"preload warm-ups: \{'ok': 2",
        ),
        2,
    ),
    "04_preloading_and_config.ipynb": (
        (
            r"\+ code\s+4\s+12\.0\s+False",
            r"connection_pool_size = -3 is out of range: must be between 1 and 1000 "
            r"\(from env FASTPIPE_CONNECTION_POOL_SIZE\)",
            r"did you mean 'performance_optimizations\.connection_pool_size'\?",
            r"api_key=SecretStr\('\*+'\)",
            r"flags off\s+text chunks per answer\s+1, connections for 5 requests 5",
            r"llama-server\s+ok .*server_start",
            r"huge-model\S*\s+timed_out",
            r"GEMMA AFTER PRELOAD: Paris",
            r"pending after construction: True",
            r"warm-up at startup: ok",
            r'"timed_out": 1',
            r"local server running: False",
        ),
        1,
    ),
}


@pytest.mark.parametrize("name", _params())
def test_notebook_runs(name: str, executed: dict[str, Executed]) -> None:
    """The notebook runs without error and shows its real results and plots."""
    if name not in executed:
        pytest.fail(f"{name} was not executed")
    result = executed[name]
    assert result.error is None, f"{name} failed:\n{result.error}"
    text = output_text(result.notebook)
    patterns, plots = EXPECTED[name]
    missing = [p for p in patterns if not re.search(p, text)]
    assert not missing, f"{name}: outputs lack {missing}\n--- outputs ---\n{text[-4000:]}"
    assert png_count(result.notebook) >= plots
    assert all(
        cell.execution_count is not None
        for cell in result.notebook.cells
        if cell.cell_type == "code"
    )


def key_leaks(notebook: NotebookNode, secret: str = FAKE_KEY) -> list[str]:
    """The outputs (as ``cell-id: output_type``) that show ``secret`` or half of it."""
    half = len(secret) // 2
    needles = (secret, secret[:half], secret[half:])
    return [
        f"{cell.get('id')}: {out['output_type']}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if any(needle in json.dumps(out) for needle in needles)
    ]


@pytest.mark.parametrize("name", _params())
def test_notebook_never_shows_the_api_key(name: str, executed: dict[str, Executed]) -> None:
    """The fake key is used by the notebook but absent from every output, plots included."""
    if name not in executed:
        pytest.fail(f"{name} was not executed")
    notebook = executed[name].notebook
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert FAKE_KEY in sources  # the notebook does use the key: the scan is not vacuous
    assert outputs_of(notebook)
    assert key_leaks(notebook) == []


def test_key_scan_finds_a_leak() -> None:
    """The scan above catches the key in a stream, a result or a traceback (no kernel)."""
    v4 = nbformat.v4
    cell = v4.new_code_cell("print(llm)")
    cell.outputs = [
        v4.new_output("stream", name="stdout", text="nothing to see\n"),
        v4.new_output("stream", name="stdout", text=f"Authorization: Bearer {FAKE_KEY}\n"),
        v4.new_output("execute_result", data={"text/plain": f"key='{FAKE_KEY[:20]}'"}),
        v4.new_output("error", ename="E", evalue="x", traceback=[f"...{FAKE_KEY[-20:]}"]),
    ]
    notebook = v4.new_notebook(cells=[cell])
    assert len(key_leaks(notebook)) == 3
    cell.outputs = cell.outputs[:1]
    assert key_leaks(notebook) == []


def test_stored_notebooks_have_cleared_outputs() -> None:
    """Every stored notebook is valid, uses the python3 kernel and has no outputs saved."""
    stored = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert stored == sorted(NOTEBOOKS), "a notebook without a test (or a missing one)"
    for name in stored:
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code, name
        for cell in code:
            assert cell.outputs == [], f"{name}: cell {cell.id} has stored outputs"
            assert cell.execution_count is None, f"{name}: cell {cell.id} has an execution count"


def test_kernel_runs_on_this_interpreter() -> None:
    """The ``python3`` kernel nbclient starts is this interpreter (the project's venv)."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import sys, matplotlib\nprint(sys.prefix)\nprint(matplotlib.get_backend())"
        )
    )
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3")
    asyncio.run(client.async_execute(env=kernel_env()))
    lines = output_text(notebook).split()
    assert lines[0] == sys.prefix
    assert lines[1].lower() == "agg"
