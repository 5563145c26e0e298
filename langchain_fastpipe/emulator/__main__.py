"""Run the emulator in the foreground: ``python -m langchain_fastpipe.emulator --port 8000``.

The ``fastpipe emulate`` command calls :func:`main` with its own arguments.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from langchain_fastpipe.emulator._app import EmulatorConfig, ModelProfile
from langchain_fastpipe.emulator._server import EmulatorServer

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog="python -m langchain_fastpipe.emulator",
        description="OpenAI- and Ollama-compatible model-server emulator (runs until Ctrl-C).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks one (8000)")
    parser.add_argument("--http2", action="store_true", help="offer HTTP/2 (ALPN h2 with --tls)")
    parser.add_argument("--tls", action="store_true", help="serve https with a trustme CA")
    parser.add_argument("--load-seconds", type=float, default=0.0, help="cold start per model")
    parser.add_argument("--first-token-seconds", type=float, default=0.0, help="time to 1st token")
    parser.add_argument("--inter-token-seconds", type=float, default=0.0, help="gap per token")
    parser.add_argument("--answer-tokens", type=int, default=12, help="words per answer (12)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="random 500s, 0..1")
    parser.add_argument("--goaway-after", type=int, default=None, help="requests per connection")
    parser.add_argument("--seed", type=int, default=0, help="seed of random faults and tails")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the :class:`EmulatorConfig` that parsed arguments describe."""
    profile = ModelProfile(
        load_seconds=args.load_seconds,
        first_token_seconds=args.first_token_seconds,
        inter_token_seconds=args.inter_token_seconds,
        answer_tokens=args.answer_tokens,
        fail_rate=args.fail_rate,
    )
    return EmulatorConfig(default=profile, seed=args.seed, goaway_after=args.goaway_after)


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Run the emulator until Ctrl-C (or until ``stop`` is set); returns the exit status.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).
        stop: Optional event that ends the run (for embedding and tests).

    Returns:
        0 on a clean stop.
    """
    args = build_parser().parse_args(argv)
    server = EmulatorServer(
        config_from_args(args), http2=args.http2, tls=args.tls, host=args.host, port=args.port
    )
    server.start()
    out = sys.stdout
    out.write(f"emulator listening on {server.base_url} (OpenAI: {server.base_url}/v1, "
              f"Ollama: {server.base_url}/api)\n")  # fmt: skip
    if server.ca_cert_path:
        out.write(f"CA certificate: {server.ca_cert_path}\n")
    out.flush()
    event = stop or threading.Event()
    try:
        while not event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
