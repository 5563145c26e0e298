"""RankedFallbacks as the model of langchain v1 ``create_agent``, over the wire.

The first candidate is a ChatFastpipe whose emulator answers every request with HTTP 500;
the second works. ``create_agent`` calls ``bind_tools`` on the model at every step, so
the agent only runs when RankedFallbacks applies it to each candidate, and the ranking
only learns when the bound copies share its record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.pipeline import RankedFallbacks

MakeEmulator = Callable[..., EmulatorServer]
CHAT = "/v1/chat/completions"


def chat(server: EmulatorServer, model: str) -> ChatFastpipe:
    return ChatFastpipe(
        model=model, base_url=server.openai_base_url, api_key="sk-test", max_retries=0
    )


@pytest.fixture
def servers(make_emulator: MakeEmulator) -> tuple[EmulatorServer, EmulatorServer]:
    """A server whose model always fails (500) and a working one (separate endpoints)."""
    broken = make_emulator(
        EmulatorConfig(default=ModelProfile(fail_rate=1.0, fail_fault=Fault.status(500)))
    )
    works = make_emulator(EmulatorConfig(default=ModelProfile(answer_tokens=6)))
    return broken, works


def ranked_models(servers: tuple[EmulatorServer, EmulatorServer]) -> RankedFallbacks[Any, Any]:
    broken, works = servers
    return RankedFallbacks(
        runnable=chat(broken, "broken"),
        fallbacks=[chat(works, "works")],
        names=["broken", "works"],
        seed=0,
    )


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_create_agent_with_failing_first_candidate_calls_the_tool_once(
    servers: tuple[EmulatorServer, EmulatorServer], mode: str
) -> None:
    calls: list[int] = []

    @tool
    def magic_function(input: int) -> int:
        """Apply a magic function to an input."""
        calls.append(input)
        return input + 2

    ranked = ranked_models(servers)
    agent = create_agent(ranked, tools=[magic_function])
    request = {"messages": [HumanMessage("What is magic_function(3)?")]}
    if mode == "sync":
        result = agent.invoke(request)
    else:
        result = await agent.ainvoke(request)

    assert calls == [3]
    messages = result["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[1].tool_calls[0]["name"] == "magic_function"
    assert messages[1].tool_calls[0]["args"] == {"input": 3}
    assert messages[2].content == "5"
    final = messages[-1]
    assert not final.tool_calls
    assert final.text.strip()

    # Both model calls reached the working server with the tool bound; the failing
    # server was tried with the same tool (bind_tools went to every candidate).
    broken, works = servers
    assert [tool_names(b) for b in works.bodies(CHAT)] == [["magic_function"]] * 2
    assert broken.bodies(CHAT)
    assert all(tool_names(b) == ["magic_function"] for b in broken.bodies(CHAT))

    # The ranking learned through the bound copies: the failure and the successes are
    # in the original's record and counters.
    learned = ranked.learned()
    assert learned["broken"].successes == 0
    assert learned["broken"].failures == len(broken.bodies(CHAT)) >= 1
    assert learned["works"].successes == 2
    assert learned["works"].failures == 0
    counters = ranked.stats()["strategies"]
    assert counters["broken"]["failures"] == {"error": learned["broken"].failures}
    assert counters["works"]["successes"] == 2


class Capital(BaseModel):
    """The capital city of a country."""

    country: str
    city: str


async def test_with_structured_output_falls_back_and_learns(
    servers: tuple[EmulatorServer, EmulatorServer],
) -> None:
    ranked = ranked_models(servers)
    structured = ranked.with_structured_output(Capital)

    first = structured.invoke("Give the 'country' and 'city' of the capital of France.")
    assert isinstance(first, Capital)
    second = await structured.ainvoke("Give the 'country' and 'city' of the capital of Peru.")
    assert isinstance(second, Capital)

    broken, works = servers
    sent = works.bodies(CHAT)
    assert len(sent) == 2
    assert all(b["response_format"]["type"] == "json_schema" for b in sent)
    assert all(b["response_format"]["type"] == "json_schema" for b in broken.bodies(CHAT))
    learned = ranked.learned()
    assert learned["broken"].failures == len(broken.bodies(CHAT)) >= 1
    assert learned["works"].successes == 2
