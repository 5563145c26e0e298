"""The default answer strategies, their prompts, validators and input normalization.

Every strategy maps ``{"question", "context", "partial_answer"}`` to the answer text and
streams the formatting model's tokens:

* ``structured``: extraction model with structured output (``with_structured_output``
  when the model supports it, JSON parsing otherwise) -> formatting model.
* ``direct``: the formatting model answers from question and context.
* ``few_shot``: extraction prompted with worked examples, parsed as JSON -> formatting.

The pure helpers (:func:`normalize_input`, :func:`parse_extraction`, :func:`is_answer`,
:func:`format_inputs`) are tested on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from pydantic import BaseModel, Field, ValidationError

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline._ranked import Strategy

__all__ = [
    "DIRECT_PROMPT",
    "EXTRACTION_PROMPT",
    "FEW_SHOT_EXTRACTION_PROMPT",
    "FORMAT_PROMPT",
    "Extraction",
    "default_strategies",
    "direct_strategy",
    "few_shot_strategy",
    "format_inputs",
    "is_answer",
    "normalize_input",
    "parse_extraction",
    "structured_strategy",
]


class Extraction(BaseModel):
    """What the extraction model pulls out of the question and context."""

    answer: str = Field(description="A short, direct answer to the question.")
    facts: list[str] = Field(
        default_factory=list, description="Facts from the context that support the answer."
    )


_CONTINUATION = (
    "\n\nThe answer so far (continue it exactly where it stops, do not repeat it):\n{partial}"
)

EXTRACTION_PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Extract what is needed to answer the question. Reply with JSON only: "
            '{{"answer": "<short answer>", "facts": ["<supporting fact>", ...]}}.',
        ),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ]
)

FEW_SHOT_EXTRACTION_PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Extract what is needed to answer the question. Reply with JSON only, like the "
            "examples.",
        ),
        ("human", "Context:\nParis is the capital of France.\n\nQuestion: Capital of France?"),
        ("ai", '{{"answer": "Paris", "facts": ["Paris is the capital of France."]}}'),
        ("human", "Context:\n\n\nQuestion: What is 2 + 3?"),
        ("ai", '{{"answer": "5", "facts": ["2 + 3 = 5"]}}'),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ]
)

FORMAT_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Write a clear, complete answer to the question from the draft and facts."),
        ("human", "Question: {question}\nDraft answer: {answer}\nFacts:\n{facts}{continuation}"),
    ]
)

DIRECT_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question clearly and completely, using the context if given."),
        ("human", "Context:\n{context}\n\nQuestion: {question}{continuation}"),
    ]
)


def normalize_input(value: Any) -> dict[str, Any]:
    """Turn a question string or dict into the strategies' input dict (pure).

    Args:
        value: ``"question"`` or ``{"question": str, "context": str | None, ...}``.

    Returns:
        A dict with ``question``, ``context`` (``""`` when None), ``partial_answer``
        (``""`` unless continuing) and ``continuation`` (the prompt suffix for it).

    Raises:
        ConfigError: When there is no non-empty question.
    """
    if isinstance(value, str):
        data: dict[str, Any] = {"question": value}
    elif isinstance(value, Mapping):
        data = dict(value)
    else:
        msg = f"AnswerPipeline input must be a str or a dict, got {type(value).__name__}"
        raise ConfigError(msg)
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        msg = "AnswerPipeline input needs a non-empty 'question' string"
        raise ConfigError(msg)
    data["context"] = data.get("context") or ""
    partial = data.get("partial_answer") or ""
    data["partial_answer"] = partial
    data["continuation"] = _CONTINUATION.format(partial=partial) if partial else ""
    return data


def _with_continuation(value: Any) -> dict[str, Any]:
    """Refresh the continuation suffix (the ranked runner adds ``partial_answer``)."""
    return normalize_input(value)


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_extraction(value: Any) -> Extraction:
    """Read an :class:`Extraction` from a model's output: instance, dict, message or text.

    Text may wrap the JSON object in prose or a Markdown fence (pure).

    Raises:
        OutputParserException: When no valid extraction is found.
    """
    if isinstance(value, Extraction):
        return value
    try:
        if isinstance(value, Mapping):
            return Extraction.model_validate(dict(value))
        text = value.text if hasattr(value, "text") and not isinstance(value, str) else value
        if not isinstance(text, str):
            text = str(text)
        match = _JSON_OBJECT.search(text)
        if match is None:
            msg = f"no JSON object in extraction output: {text[:80]!r}"
            raise OutputParserException(msg)
        return Extraction.model_validate(json.loads(match.group(0)))
    except (ValidationError, json.JSONDecodeError, TypeError) as exc:
        msg = f"extraction output is not a valid Extraction: {exc}"
        raise OutputParserException(msg) from exc


def format_inputs(data: Mapping[str, Any]) -> dict[str, Any]:
    """The formatting prompt's variables from the input and its extraction (pure)."""
    extraction = parse_extraction(data["extraction"])
    facts = "\n".join(f"- {fact}" for fact in extraction.facts) or "- (none)"
    return {
        "question": data["question"],
        "answer": extraction.answer,
        "facts": facts,
        "continuation": data.get("continuation", ""),
    }


def is_answer(output: Any) -> bool:
    """The default validator: a non-empty answer text (pure)."""
    text = output.text if hasattr(output, "text") and not isinstance(output, str) else output
    return isinstance(text, str) and bool(text.strip())


def _extractor(
    model: BaseChatModel, prompt: ChatPromptTemplate, *, structured: bool
) -> Runnable[Any, Any]:
    """Prompt -> model -> parsed Extraction, with structured output when supported."""
    if structured:
        try:
            return prompt | model.with_structured_output(Extraction)
        except NotImplementedError:
            pass
    return prompt | model | RunnableLambda(parse_extraction, name="parse_extraction")


def _extract_then_format(
    extraction_model: BaseChatModel,
    formatting_model: BaseChatModel,
    prompt: ChatPromptTemplate,
    *,
    structured: bool,
) -> Runnable[Any, str]:
    extractor = _extractor(extraction_model, prompt, structured=structured)
    return (
        RunnableLambda(_with_continuation, name="inputs")
        | RunnablePassthrough.assign(extraction=extractor)
        | RunnableLambda(format_inputs, name="format_inputs")
        | FORMAT_PROMPT
        | formatting_model
        | StrOutputParser()
    )


def structured_strategy(
    extraction_model: BaseChatModel, formatting_model: BaseChatModel
) -> Strategy:
    """``structured``: structured extraction, then formatting."""
    chain = _extract_then_format(
        extraction_model, formatting_model, EXTRACTION_PROMPT, structured=True
    )
    return Strategy(name="structured", runnable=chain, validator=is_answer)


def direct_strategy(formatting_model: BaseChatModel) -> Strategy:
    """``direct``: the formatting model answers the question directly."""
    chain = (
        RunnableLambda(_with_continuation, name="inputs")
        | DIRECT_PROMPT
        | formatting_model
        | StrOutputParser()
    )
    return Strategy(name="direct", runnable=chain, validator=is_answer)


def few_shot_strategy(extraction_model: BaseChatModel, formatting_model: BaseChatModel) -> Strategy:
    """``few_shot``: extraction prompted with examples and parsed as JSON, then formatting."""
    chain = _extract_then_format(
        extraction_model, formatting_model, FEW_SHOT_EXTRACTION_PROMPT, structured=False
    )
    return Strategy(name="few_shot", runnable=chain, validator=is_answer)


def default_strategies(
    extraction_model: BaseChatModel, formatting_model: BaseChatModel
) -> list[Strategy]:
    """The default set, in fixed-order preference: structured, direct, few_shot."""
    return [
        structured_strategy(extraction_model, formatting_model),
        direct_strategy(formatting_model),
        few_shot_strategy(extraction_model, formatting_model),
    ]
