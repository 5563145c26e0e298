"""Answer quality on the real model: the optimized path answers exactly as the plain path.

The question set and both paths are ``benchmarks/bench_quality.py``'s, which prints the
accuracy of each; here the texts are compared, question by question, at temperature 0.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from langchain_fastpipe.local import LocalModelServer, find_binary

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _bench_quality() -> ModuleType:
    """``benchmarks/bench_quality.py`` as a module (it imports its sibling ``_common``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("bench_quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


bq = _bench_quality()


def test_the_question_set_is_thirty_distinct_questions_with_answers() -> None:
    questions = bq.load_questions()
    assert len(questions) == 30
    assert len({q.question for q in questions}) == 30
    assert all(q.question.endswith("?") and q.answers for q in questions)


def test_answers_are_scored_by_whole_words() -> None:
    assert bq.is_correct("The Pacific Ocean", ("Pacific Ocean", "Pacific"))
    assert bq.is_correct("Leonardo da Vinci.", ("da Vinci",))
    assert bq.is_correct("  paris", ("Paris",))
    assert not bq.is_correct("100 degrees", ("0", "zero"))
    assert not bq.is_correct("Parisian", ("Paris",))
    assert not bq.is_correct("", ("Paris",))


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    find_binary()  # a missing binary is a clear LocalServerError, not a skip
    with LocalModelServer() as running:  # the default server: 4 slots
        yield running


@pytest.mark.real_model
@pytest.mark.timeout(900)
async def test_optimized_path_text_equals_plain_path_text_for_every_question(
    server: LocalModelServer,
) -> None:
    # Same prompt on both paths. llama.cpp's prompt cache is off in these requests: with it,
    # a reused prefix is evaluated in other batches than a whole prompt and a near tie can
    # tip (bench_quality.py shows it); without it each answer depends on its prompt alone,
    # so any difference is the client's: pooling, streaming, preloading or the pipeline.
    questions = bq.load_questions()
    result = await bq.measure(server, questions, cache=False)
    differences = [
        (q.question, plain, optimized)
        for q, plain, optimized in zip(questions, result["plain"], result["optimized"], strict=True)
        if plain != optimized
    ]
    assert differences == []
    assert all(answer and "\n" not in answer for answer in result["plain"])
    assert result["plain_correct"] == result["optimized_correct"]
