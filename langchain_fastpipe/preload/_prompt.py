"""The application's prompt for a warm-up: templates found in chains, rendered (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableParallel,
    RunnableSequence,
    RunnableWithFallbacks,
)
from langchain_core.runnables.passthrough import RunnableAssign

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import PreloadError
from langchain_fastpipe.preload._spec import _default_name, _describe


def _chat_model_of(step: object) -> BaseChatModel | None:
    """The chat model a chain step runs first, or None when it runs none.

    The model itself, bound or configured (``bind``, ``with_config``, ``bind_tools``),
    or the head of a sequence such as the one ``with_structured_output`` returns.
    """
    while True:
        if isinstance(step, BaseChatModel):
            return step
        if isinstance(step, RunnableBinding):
            step = step.bound
        elif isinstance(step, RunnableSequence):
            step = step.first
        else:
            return None


def _children(node: object) -> list[object]:
    """The runnables nested in ``node`` that :func:`find_prompts` looks into."""
    if isinstance(node, RunnableSequence):
        return list(node.steps)
    if isinstance(node, RunnableParallel):
        return list(node.steps__.values())
    if isinstance(node, RunnableAssign):
        return [node.mapper]
    if isinstance(node, RunnableBinding):
        return [node.bound]
    if isinstance(node, RunnableWithFallbacks):
        return [node.runnable, *node.fallbacks]
    # RankedFallbacks (its strategies' runnables) and AnswerPipeline (its ranked step).
    found: list[object] = []
    ranked = getattr(node, "ranked", None)
    if isinstance(ranked, Runnable):
        found.append(ranked)
    strategies = getattr(node, "strategies", None)
    if isinstance(strategies, (list, tuple)):
        found.extend(getattr(s, "runnable", None) for s in strategies)
    return [child for child in found if isinstance(child, Runnable)]


def find_prompts(
    chain: Runnable[Any, Any], model: BaseChatModel | None = None
) -> list[tuple[BasePromptTemplate[Any], BaseChatModel]]:
    """The prompt templates of ``chain`` that feed a chat model directly (pure).

    Looks into sequences, parallel and assign steps, bindings, ``with_fallbacks``,
    :class:`~langchain_fastpipe.pipeline.RankedFallbacks` and
    :class:`~langchain_fastpipe.pipeline.AnswerPipeline`. A template counts when the
    step right after it is a chat model (also bound, configured or with structured output).

    Args:
        chain: The application's chain, e.g. ``prompt | llm | StrOutputParser()``.
        model: Keep only the templates feeding this model (by identity); None: any.

    Returns:
        ``(template, model)`` pairs in the order found, each template once per model.
    """
    pairs: list[tuple[BasePromptTemplate[Any], BaseChatModel]] = []
    seen: set[tuple[int, int]] = set()
    visited: set[int] = set()
    stack: list[object] = [chain]
    while stack:  # depth first, in the order the chain is written
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, RunnableSequence):
            steps = node.steps
            for step, after in itertools.pairwise(steps):
                target = _chat_model_of(after)
                if not isinstance(step, BasePromptTemplate) or target is None:
                    continue
                if model is not None and target is not model:
                    continue
                if (id(step), id(target)) not in seen:
                    seen.add((id(step), id(target)))
                    pairs.append((step, target))
        stack.extend(reversed(_children(node)))
    return pairs


#: What a warm-up can carry: a prompt template, a list of messages, or a chain.
PromptLike = BasePromptTemplate[Any] | Sequence[Any] | Runnable[Any, Any]


def _placeholder_names(template: BasePromptTemplate[Any]) -> set[str]:
    """The variables of ``template`` that take a list of messages."""
    if not isinstance(template, ChatPromptTemplate):
        return set()
    return {m.variable_name for m in template.messages if isinstance(m, MessagesPlaceholder)}


def _render(template: BasePromptTemplate[Any], inputs: Mapping[str, Any]) -> list[BaseMessage]:
    """``template`` formatted with ``inputs``; a missing variable is empty ("" or [])."""
    lists = _placeholder_names(template)
    values = {
        name: inputs.get(name, [] if name in lists else "") for name in template.input_variables
    }
    return template.format_prompt(**values).to_messages()


def warmup_messages(
    prompt: PromptLike,
    *,
    model: BaseChatModel | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> list[list[BaseMessage]]:
    """The message lists a warm-up sends for ``prompt`` (pure).

    Each list is what the application will send, up to its inputs: templates are
    rendered with ``inputs`` and every other variable empty (``""``, or no messages for
    a ``MessagesPlaceholder``), so the rendered text shares with every real request the
    prefix before the first variable, which is what a server's prompt cache can reuse.

    Args:
        prompt: A prompt template; a list of messages (anything
            ``convert_to_messages`` takes); a chain (see :func:`find_prompts`); or a
            list or tuple of several prompts, holding at least one template or chain
            (its other items are then message lists).
        model: For chains: only the templates feeding this model.
        inputs: Values for some of the templates' variables (e.g. a typical question).

    Returns:
        One message list per prompt, in order.

    Raises:
        PreloadError: A chain has no template feeding ``model``, the messages cannot be
            converted, or a template cannot be rendered.
    """
    values = dict(inputs or {})
    if isinstance(prompt, (list, tuple)) and any(isinstance(p, Runnable) for p in prompt):
        return [m for p in prompt for m in warmup_messages(p, model=model, inputs=values)]
    try:
        if isinstance(prompt, BasePromptTemplate):
            return [_render(prompt, values)]
        if isinstance(prompt, Runnable):
            pairs = find_prompts(prompt, model)
            if not pairs:
                whose = f"the model {_default_name(model)}" if model is not None else "a chat model"
                raise PreloadError(
                    f"register: no prompt template in {type(prompt).__name__} feeds {whose}; "
                    "pass the template itself or a chain such as prompt | llm"
                )
            return [_render(template, values) for template, _ in pairs]
        if isinstance(prompt, str):
            return [convert_to_messages([prompt])]
        return [convert_to_messages(prompt)]
    except PreloadError:
        raise
    except Exception as exc:  # KeyError, ValueError, NotImplementedError of langchain-core
        raise PreloadError(f"register: cannot render the warm-up prompt: {_describe(exc)}") from exc


def _model_of_chain(
    chain: Runnable[Any, Any], inputs: Mapping[str, Any] | None
) -> tuple[ChatFastpipe, list[list[BaseMessage]]]:
    """The one ChatFastpipe a chain's prompts feed, and those prompts rendered.

    Raises:
        PreloadError: No ChatFastpipe, or several, is fed by a template of ``chain``.
    """
    pairs = find_prompts(chain)
    chats: list[ChatFastpipe] = []
    for _, target in pairs:
        if isinstance(target, ChatFastpipe) and all(target is not c for c in chats):
            chats.append(target)
    if len(chats) != 1:
        found = "no ChatFastpipe" if not chats else f"{len(chats)} ChatFastpipe models"
        raise PreloadError(
            f"register: cannot warm a {type(chain).__name__}: its prompt templates feed "
            f"{found}; register each model with prompt=chain instead"
        )
    (chat,) = chats
    values = dict(inputs or {})
    return chat, [_render(template, values) for template, target in pairs if target is chat]
