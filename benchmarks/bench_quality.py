"""Answer quality of the real model, measured: the plain path against the optimized path.

A claim such as "87% answer quality maintained" means nothing without a method. This is
the method: a fixed set of 30 short factual questions (``quality_questions.json``, each with
its accepted answers), asked of the real llama-server + Gemma 3 270M at temperature 0 with the
package's few-shot prompt (``FEW_SHOT_PROMPT``, ``stop=["\\n"]``), over two paths:

* plain: a fresh ChatFastpipe per question, no connection pooling, no streaming, no
  pipeline, no preloading (``(FEW_SHOT_PROMPT | llm).invoke``);
* optimized: one pooled ChatFastpipe preloaded with the prompt (``ModelPreloader``), the
  answer streamed through an ``AnswerPipeline`` whose strategy sends the same prompt.

An answer is correct when, lower-cased with punctuation removed, it contains one accepted
answer as whole words (``is_correct``). Both paths send the same prompt, so the client's
optimizations must not change an answer. The server's prompt cache can: llama.cpp
evaluates a reused prefix in other batches than a whole prompt, and at temperature 0 a
near tie may then tip the other way (the cache state depends on the requests before).
So each path runs twice, on one server: with llama.cpp's prompt cache as it comes (on) and
with ``cache_prompt: false`` in every request, where each answer depends on its prompt
alone and the texts must be identical (``tests/integration_tests/test_real_model_quality.py``
asserts it).

Run: ``.venv/bin/python benchmarks/bench_quality.py [--show]`` (about 1 minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table
from langchain_core.output_parsers import StrOutputParser

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import LocalServerError
from langchain_fastpipe.local import LocalModelServer, find_binary
from langchain_fastpipe.pipeline import AnswerPipeline, Strategy, is_answer
from langchain_fastpipe.preload import ModelPreloader
from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

QUESTIONS_FILE = Path(__file__).resolve().with_name("quality_questions.json")
#: The settings both paths send (the demo's).
MODEL_SETTINGS: dict[str, Any] = {
    "api_key": "not-needed",
    "temperature": 0.0,
    "max_tokens": 16,
    "stop": ["\n"],
}


@dataclass(frozen=True)
class Question:
    """One question of the set and the answers accepted for it."""

    question: str
    answers: tuple[str, ...]


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    """The question set."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Question(q["question"], tuple(q["answers"])) for q in data["questions"]]


def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``answer`` holds one of ``accepted`` as whole words (case, punctuation ignored)."""
    said = _words(answer)
    return any(_words(a) in said for a in accepted)


def _settings(cache: bool) -> dict[str, Any]:
    """The model settings, with llama.cpp's prompt cache on (its default) or off."""
    return {**MODEL_SETTINGS, "model_kwargs": {} if cache else {"cache_prompt": False}}


def plain_answer(server: LocalModelServer, question: str, *, cache: bool = True) -> str:
    """The plain path: a fresh, unpooled client, one non-streamed request, no pipeline."""
    llm = ChatFastpipe(
        model=server.model, base_url=server.openai_base_url, pooling=False, **_settings(cache)
    )
    reply = (FEW_SHOT_PROMPT | llm).invoke({"question": question})
    return str(reply.content)


async def optimized_answers(
    server: LocalModelServer, questions: list[str], *, cache: bool = True
) -> list[str]:
    """The optimized path: pooled, preloaded with the prompt, streamed, AnswerPipeline."""
    llm = ChatFastpipe(model=server.model, base_url=server.openai_base_url, **_settings(cache))
    preloader = ModelPreloader()
    preloader.register(llm, prompt=FEW_SHOT_PROMPT)
    results = await preloader.preload(raise_on_error=True)
    assert all(r.ok for r in results)
    strategy = Strategy(
        name="few_shot", runnable=FEW_SHOT_PROMPT | llm | StrOutputParser(), validator=is_answer
    )
    pipeline = AnswerPipeline(strategies=[strategy], seed=0)
    answers: list[str] = []
    for question in questions:
        answers.append("".join([chunk async for chunk in pipeline.astream(question)]))
    return answers


async def measure(
    server: LocalModelServer, questions: list[Question], *, cache: bool = True
) -> dict[str, Any]:
    """Both paths over every question: their texts and whether each is correct."""
    texts = [q.question for q in questions]
    plain = [await asyncio.to_thread(plain_answer, server, t, cache=cache) for t in texts]
    optimized = await optimized_answers(server, texts, cache=cache)
    return {
        "plain": plain,
        "optimized": optimized,
        "plain_correct": [is_correct(a, q.answers) for a, q in zip(plain, questions, strict=True)],
        "optimized_correct": [
            is_correct(a, q.answers) for a, q in zip(optimized, questions, strict=True)
        ],
    }


def report(questions: list[Question], results: dict[bool, dict[str, Any]], *, show: bool) -> str:
    """The side-by-side table (and, with ``show``, every answer and every difference)."""
    n = len(questions)
    rows: list[list[object]] = []
    labels = {
        "plain": "plain (fresh client, invoke)",
        "optimized": "optimized (pooled, preloaded, streamed, AnswerPipeline)",
    }
    for cache, result in results.items():
        same = sum(a == b for a, b in zip(result["plain"], result["optimized"], strict=True))
        for path, label in labels.items():
            correct = sum(result[f"{path}_correct"])
            rows.append([label, "on" if cache else "off", f"{correct}/{n}", f"{correct / n:.0%}",
                         f"{same}/{n}"])  # fmt: skip
    header = ["path", "prompt cache", "correct", "accuracy", "texts identical to plain"]
    out = [table("Gemma 3 270M answer quality, temperature 0, few-shot prompt", header, rows)]
    for cache, result in results.items():
        pairs = zip(questions, result["plain"], result["optimized"], strict=True)
        for q, a, b in pairs:
            if a != b:
                out.append(f"prompt cache {'on' if cache else 'off'}: {q.question} plain {a!r}, "
                           f"optimized {b!r}")  # fmt: skip
    if show:
        out.append("")
        result = results[False] if False in results else next(iter(results.values()))
        for q, a, ok in zip(questions, result["plain"], result["plain_correct"], strict=True):
            out.append(f"{'ok ' if ok else 'NO '} {q.question} -> {a!r} (accepted: {q.answers})")
    return "\n".join(out)


async def main(show: bool) -> int:
    try:
        find_binary()
    except LocalServerError as exc:
        print(f"(real model skipped: {exc})")
        return 0
    questions = load_questions()
    results: dict[bool, dict[str, Any]] = {}
    async with LocalModelServer() as server:  # the default server: 4 slots, prompt cache on
        for cache in (True, False):
            results[cache] = await measure(server, questions, cache=cache)
    print(f"Machine: {machine()}")
    print(report(questions, results, show=show))
    print(
        "\nThe set: benchmarks/quality_questions.json. Both paths send the same prompt. With the\n"
        "prompt cache off every answer depends on its prompt alone: the texts must be identical\n"
        "(the client's optimizations change nothing). With it on, the server may tip a near tie\n"
        "differently depending on what it cached before (listed above)."
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--quick", action="store_true", help="(same run: 30 questions)")
    ns = parser.parse_args()
    sys.exit(asyncio.run(main(ns.show)))
