"""`frugal-r1 serve`: the OpenAI-compatible server (app.py) under uvicorn.

    frugal-r1 serve --model runs/grpo/final --port 8000 --api-key sk-local
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local").chat.completions.create(...)

The key may come from the environment instead (`FRUGAL_R1_API_KEY`), which keeps it out of `ps`. The
model's name in the API is `--model-name`, by default the model directory's name. It binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from frugal_r1.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="an OpenAI-compatible chat server (reasoning_content, streaming)")
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory (ours or transformers)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("FRUGAL_R1_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $FRUGAL_R1_API_KEY, else no key)")
    parser.add_argument("--model-name", help="the model's id in the API (default: the directory's name)")
    parser.add_argument("--max-batch-rows", type=int, default=64, help="most sequences decoded at once")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="when idle, wait this long after a request for others to batch with it")
    parser.add_argument("--backend", default="auto", choices=["auto", "frugal", "hf"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run)


def check_address(host: str, port: int) -> None:
    """Fail before the model loads, not after, when the server could not listen at host:port (a port in use,
    a host name that does not resolve)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UserError(f"--host {host}: {error.strerror}") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
            probe.bind(address)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from frugal_r1.generate import load_backend
    from frugal_r1.serve.app import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch_rows < 1 or args.batch_window_ms < 0:
        raise UserError("--max-batch-rows must be >= 1 and --batch-window-ms >= 0")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    check_address(args.host, args.port)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = load_backend(args.model, backend=args.backend)
    name = args.model_name or Path(args.model).resolve().name
    app = create_app(backend, name, args.api_key or None, max_batch_rows=args.max_batch_rows,
                     batch_window_s=args.batch_window_ms / 1000)
    print(f"serving {name} ({backend.context_length}-token context) on http://{args.host}:{args.port}/v1"
          + (" (API key required)" if args.api_key else ""), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
