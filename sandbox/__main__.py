"""``python -m sandbox [--host 127.0.0.1] [--port 12111] [--dataset demo|empty]``."""

from __future__ import annotations

import argparse

from sandbox.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="A Stripe-compatible sandbox API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--dataset", choices=("demo", "empty"), default="demo")
    args = parser.parse_args()
    print(f"Stripe sandbox on http://{args.host}:{args.port} (dataset {args.dataset}); Ctrl-C stops it.")
    serve(args.host, args.port, args.dataset)


if __name__ == "__main__":
    main()
