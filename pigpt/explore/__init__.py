"""pigpt-explore: a local web page over pigpt's decoding engine (the distribution, draws, branching, rollouts,
beams, rewards), live. `python -m pigpt.explore` or `pigpt-explore`; the JSON API is documented at /docs.

    pigpt-explore [--model default] [--port 8000] [--host 127.0.0.1]

core.py computes (no web), server.py serves (FastAPI, an optional extra: pip install 'pigpt[explore]'),
rewards.py scores rewards in a child process a time bound can kill, static/ is the page (HTML, vanilla JS,
SVG; nothing fetched from elsewhere). docs/explore.md documents the page and the JSON API.
"""

from __future__ import annotations

import argparse
import sys

INSTALL = "pigpt-explore needs FastAPI and uvicorn: install them with pip install 'pigpt[explore]'"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pigpt-explore", description="A local web page over pigpt's decoding engine: "
                                "the next-token distribution, draws, branching, rollouts, beams and rewards.")
    p.add_argument("--model", default="default", help="a checkpoint directory, 'default' (the shipped model) or a "
                   "hub id such as gpt2 (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only; anything else lets others on the network use the model)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may run (default: %(default)s)")
    return p


def make_app(model_name: str = "default", *, timeout: float = 60.0):
    """The FastAPI app over a freshly loaded model (tests and the benchmark serve it themselves)."""
    from pigpt.model import GPT

    from .core import Explorer
    from .server import create_app

    return create_app(Explorer(GPT.from_pretrained(model_name), name=model_name), timeout=timeout)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"pigpt-explore: error: --port {args.port} is not a port number (0 to 65535)", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print(f"pigpt-explore: error: --timeout must be > 0 seconds, got {args.timeout}", file=sys.stderr)
        return 2
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(f"pigpt-explore: warning: listening on {args.host}, not 127.0.0.1: anyone who can reach this "
              "machine can use the model", file=sys.stderr)
    import socket

    from pigpt.model import CheckpointError

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))  # first, and here rather than in uvicorn: a taken port is one line, at once
    except OSError as e:
        sock.close()
        print(f"pigpt-explore: error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); pick another "
              "--port (0 picks a free one)", file=sys.stderr)
        return 2
    try:
        app = make_app(args.model, timeout=args.timeout)
    except (CheckpointError, OSError, ValueError) as e:
        sock.close()
        print(f"pigpt-explore: error: --model {args.model}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    sock.listen(128)  # from now on connections wait in the backlog, so the URL printed below answers
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"pigpt-explore: {args.model} at http://{host}:{port}/  (JSON API: http://{host}:{port}/docs; Ctrl-C stops)",
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


__all__ = ["main", "make_app", "build_parser"]
