"""Structured output for ChatFastpipe: ``response_format`` building and parser runnables."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_function
from langchain_core.utils.json import parse_json_markdown
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers._convert import convert_tools

if TYPE_CHECKING:
    from langchain_fastpipe.chat_models import ChatFastpipe

__all__ = [
    "is_pydantic_class",
    "json_schema_response_format",
    "parse_structured",
    "structured_output",
]

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


def _is_pydantic_v1(cls: type) -> bool:
    """Whether ``cls`` is a ``pydantic.v1`` model (that module is loaded when one exists).

    ``pydantic.v1`` costs ~50 ms to import, so it is not imported to answer this.
    """
    v1 = sys.modules.get("pydantic.v1")
    return v1 is not None and issubclass(cls, v1.BaseModel)


def is_pydantic_class(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic (v1 or v2) model class."""
    return isinstance(obj, type) and is_basemodel_subclass(obj)


def json_schema_response_format(schema: Any, *, strict: bool | None = None) -> dict[str, Any]:
    """An OpenAI ``response_format`` of type ``json_schema`` for a pydantic class or schema.

    Args:
        schema: A pydantic class, TypedDict, JSON schema or OpenAI function dict; a
            ready ``{"type": "json_schema", ...}`` dict is returned unchanged.
        strict: Ask the server for strict schema adherence.

    Returns:
        ``{"type": "json_schema", "json_schema": {"name", "schema", ...}}``.
    """
    if isinstance(schema, Mapping) and schema.get("type") == "json_schema":
        return dict(schema)
    if isinstance(schema, Mapping) and "name" in schema and "schema" in schema:
        return {"type": "json_schema", "json_schema": dict(schema)}
    function = convert_to_openai_function(schema, strict=bool(strict) if strict else None)
    spec: dict[str, Any] = {"name": function["name"], "schema": function.get("parameters", {})}
    if function.get("description"):
        spec["description"] = function["description"]
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def parse_structured(message: AIMessage, schema: type[BaseModel]) -> BaseModel | None:
    """Parse a json_schema reply's content into ``schema`` (None for a tool-call reply).

    Raises:
        OutputParserException: The content is not JSON.
    """
    text = message.text
    if not text.strip() and message.tool_calls:
        return None
    try:
        data = parse_json_markdown(text)
    except ValueError as exc:
        msg = f"structured output is not valid JSON: {text[:200]!r}"
        raise OutputParserException(msg, llm_output=text) from exc
    return schema.model_validate(data)


def structured_output(
    model: ChatFastpipe,
    schema: dict[str, Any] | type | None,
    *,
    method: StructuredMethod,
    include_raw: bool,
    strict: bool | None,
    kwargs: dict[str, Any],
) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
    """The runnable of ``ChatFastpipe.with_structured_output`` (as langchain-openai builds it).

    Args:
        model: The chat model (its ``bind_tools`` and ``bind`` are used).
        schema: The output schema; optional for ``json_mode``.
        method: ``"json_schema"``, ``"function_calling"`` or ``"json_mode"``.
        include_raw: Return ``{"raw", "parsed", "parsing_error"}``.
        strict: Ask for strict schema adherence (not with ``json_mode``).
        kwargs: More arguments bound to every call.

    Returns:
        The structured-output runnable.

    Raises:
        ConfigError: An unknown method, a missing schema, or ``strict`` with json_mode.
    """
    if method not in ("json_schema", "function_calling", "json_mode"):
        msg = f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}"
        raise ConfigError(msg)
    if strict is not None and method == "json_mode":
        msg = "strict is not supported with method='json_mode'"
        raise ConfigError(msg)
    if schema is None and method != "json_mode":
        msg = f"schema is required with method={method!r}"
        raise ConfigError(msg)
    is_pydantic = is_pydantic_class(schema)
    if method == "json_schema" and is_pydantic and _is_pydantic_v1(cast(type, schema)):
        warnings.warn(
            "pydantic.v1 models are not supported by method='json_schema'; "
            "using method='function_calling'",
            stacklevel=3,  # the caller of ChatFastpipe.with_structured_output
        )
        method = "function_calling"
    output_parser: Runnable[Any, Any]
    if method == "function_calling":
        tool_name = convert_tools([schema])[0]["function"]["name"]
        llm = model.bind_tools(
            [schema],
            tool_choice=tool_name,
            strict=strict,
            parallel_tool_calls=False,
            ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict},
                "schema": schema,
            },
            **kwargs,
        )
        output_parser = (
            PydanticToolsParser(tools=[cast(type, schema)], first_tool_only=True)
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
        )
    elif method == "json_mode":
        llm = model.bind(
            response_format={"type": "json_object"},
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            **kwargs,
        )
        output_parser = (
            PydanticOutputParser(pydantic_object=cast(type[BaseModel], schema))
            if is_pydantic
            else JsonOutputParser()
        )
    else:
        llm = model.bind(
            response_format=json_schema_response_format(schema, strict=strict),
            ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict},
                "schema": convert_tools([schema])[0],
            },
            **kwargs,
        )
        if is_pydantic:
            pydantic_schema = cast(type[BaseModel], schema)

            def parse(message: AIMessage) -> BaseModel | None:
                return parse_structured(message, pydantic_schema)

            output_parser = RunnableLambda(parse).with_types(output_type=pydantic_schema)
        else:
            output_parser = JsonOutputParser()
    if include_raw:
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | output_parser, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks(
            [parser_none], exception_key="parsing_error"
        )
        return cast(Runnable[LanguageModelInput, Any], RunnableMap(raw=llm) | parser_with_fallback)
    return cast(Runnable[LanguageModelInput, Any], llm | output_parser)
