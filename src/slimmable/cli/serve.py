"""``slimmable serve CKPT``: predictions over HTTP, at the width that meets a latency target."""

from __future__ import annotations

import argparse
import sys

from .args import add_debug_argument, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve predictions over HTTP, switching width per batch to meet a latency target",
        description="Serve CKPT (a run's checkpoint, a switchable ONNX file from `slimmable "
        "export --all-widths`, or a zoo name with random weights, for timing) on Starlette + "
        "uvicorn: POST /v1/predict, GET /v1/health, /v1/widths, /metrics. Requests are batched "
        "dynamically; the adaptive policy runs each batch at the widest width whose predicted "
        "latency plus the time already queued meets --slo-ms and that keeps up with the arrivals "
        "(docs/serving.md has the formula). SIGTERM drains and exits.",
    )
    p.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint or run folder, switchable .onnx, or zoo name"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="latency target (default 100)")
    p.add_argument("--policy", choices=("adaptive", "fixed"), default="adaptive")
    p.add_argument("--width", type=float, help="the width of --policy fixed (default: widest)")
    p.add_argument(
        "--max-batch", type=positive_int, default=16, help="images per batch (default 16)"
    )
    p.add_argument(
        "--headroom", type=float, default=0.8,
        help="share of --slo-ms the policy plans with (default 0.8; the rest covers HTTP)",
    )  # fmt: skip
    p.add_argument(
        "--utilisation", type=float, default=0.6,
        help="most of a width's capacity the arrivals may use (default 0.6; keeps the queue short)",
    )  # fmt: skip
    p.add_argument("--threads", type=positive_int, help="compute threads (default: torch's)")
    p.add_argument(
        "--input-size", type=positive_int, help="zoo models only: image side (default: the model's)"
    )
    p.add_argument(
        "--max-body-mb", type=float, default=8.0, help="request body limit in MB (default 8)"
    )
    add_debug_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..latency import keep_freed_memory
    from ..models import list_models
    from ..serve import ServeConfig, SlimmableService, load_backend, make_server, zoo_backend

    config = ServeConfig(
        policy=args.policy,
        slo_ms=args.slo_ms,
        width=args.width,
        max_batch=args.max_batch,
        headroom=args.headroom,
        utilisation=args.utilisation,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # large activations are reused, not faulted in again per batch
    if args.input_size is not None:
        if args.checkpoint not in list_models():
            raise ValueError("--input-size applies to zoo names; a checkpoint has its own size")
        backend = zoo_backend(args.checkpoint, (args.input_size, args.input_size))
    else:
        backend = load_backend(args.checkpoint, threads=args.threads)
    print(
        f"measuring {backend.card.name} at {len(backend.card.widths)} widths ...", file=sys.stderr
    )
    service = SlimmableService(backend, config)
    server = make_server(service, args.host, args.port)
    widths = ", ".join(f"{w:g}" for w in backend.card.width_values)
    print(
        f"serving {backend.card.name} on http://{args.host}:{args.port} (policy {config.policy}, "
        f"slo {config.slo_ms:g} ms, widths {widths})",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    print("drained; bye", file=sys.stderr)
    return 0
