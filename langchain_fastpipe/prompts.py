"""Prompts shared by the library, the benchmarks and the ``fastpipe`` command.

A neutral module (it imports only langchain-core), so library code such as
:mod:`langchain_fastpipe.bench` never depends on the command-line module.
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate

__all__ = ["FEW_SHOT_PROMPT"]

#: A few-shot prompt that makes a small base model (Gemma 3 270M) answer in a few words.
#: Its one input variable is ``question``. Use it with ``stop=["\n"]``: the local model
#: ends its answer with a newline (see ``langchain_fastpipe/local/gemma_template.jinja``).
FEW_SHOT_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer with a few words only."),
        ("human", "What is the capital of Italy?"),
        ("ai", "Rome"),
        ("human", "What colour is the sky on a clear day?"),
        ("ai", "Blue"),
        ("human", "{question}"),
    ]
)
