"""The README's Python examples run, in order, against the emulator (they show the real API)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = "http://127.0.0.1:8080/v1"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 5
    assert all(PLACEHOLDER in b for b in blocks[:1])


async def test_readme_examples_run_against_the_emulator(emulator, capsys) -> None:
    namespace: dict[str, object] = {}
    for number, block in enumerate(_python_blocks()):
        source = block.replace(PLACEHOLDER, f"{emulator.base_url}/v1")
        code = compile(
            source, f"README.md block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        result = eval(code, namespace)  # noqa: S307 - our own README, compiled above
        if result is not None:
            await result
    out = capsys.readouterr().out
    assert "time to first chunk:" in out
    assert "enable_connection_pooling" in out
    assert "pools" in out
