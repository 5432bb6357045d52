"""Switchable ONNX file vs the one-width export of each width, in onnxruntime (CPU).

For each width the switchable file holds, the file run at that width and the one-width export
of that width (``slimmable export --width W``) take the same input in interleaved rounds
(``slimmable.latency.interleaved_timings``: every round times both, alternating orders); the
ratio is the median over rounds of switchable / one-width time in the same round, so load from
other processes cancels out. A third variant, timed against the one-width export in a pair of
its own, shows what the design the switchable file avoids would cost: the one-width graph whose
weights are sliced *at run time* from full-width tensors (``Slice`` ends that depend on an
input, so onnxruntime can neither fold nor pre-pack them).
It is a lower bound of that design: its depthwise convolutions keep their static ``group``,
which a real run-time-switching graph could not. Batch 1 and 16; one onnxruntime thread by
default. Also the file sizes: switchable / full-width export. Targets: time ratio <= 1.15,
size ratio <= 1.15. Random weights (timing does not depend on them).

    PYTHONPATH=src python benchmarks/switchable.py [--model s_mobilenet_v2] [--size 224] \
        [--batches 1,16] [--rounds 20] [--threads 1] [--json benchmarks/results/switchable.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import slimmable
from slimmable.export import export_subnet, extract_subnet
from slimmable.latency import interleaved_timings
from slimmable.switchable import export_switchable

TARGET = 1.15


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runtime_sliced(one_width: Path, full_width: Path, out: Path) -> Path:
    """``one_width`` with every weight a run-time ``Slice`` of ``full_width``'s tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(one_width))
    full = {i.name: i for i in onnx.load(str(full_width)).graph.initializer}
    graph = proto.graph
    keep, nodes = [], []
    for init in graph.initializer:
        big = full.get(init.name)
        if big is None or len(init.dims) == 0 or tuple(big.dims) == tuple(init.dims):
            keep.append(init)
            continue
        r = len(init.dims)
        names = [f"{init.name}/{k}" for k in ("full", "starts", "ends0", "axes", "ends")]
        source = onnx.TensorProto()
        source.CopyFrom(big)
        source.name = names[0]
        keep += [
            source,
            numpy_helper.from_array(np.zeros(r, np.int64), names[1]),
            numpy_helper.from_array(np.asarray(init.dims, np.int64), names[2]),
            numpy_helper.from_array(np.arange(r, dtype=np.int64), names[3]),
        ]
        nodes += [
            helper.make_node("Add", [names[2], "zero_shift"], [names[4]]),
            helper.make_node("Slice", [names[0], names[1], names[4], names[3]], [init.name]),
        ]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    graph.input.append(helper.make_tensor_value_info("zero_shift", TensorProto.INT64, [1]))
    onnx.save(proto, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s_mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/switchable.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = slimmable.create_model(args.model).eval()
    slimmable.set_uncalibrated(model, "running")  # US models: random weights, no calibration
    size = (3, args.size, args.size)
    folder = Path(tempfile.mkdtemp(prefix="switchable-"))
    path = export_switchable(model, folder / "all.onnx", input_size=size)
    switchable = session(path, args.threads)
    widths = slimmable.switchable.load_switchable(path).widths
    single = {}
    for w in widths:
        net = extract_subnet(model, w, input_size=size)
        single[w] = session(
            export_subnet(net, folder / f"w{w}.onnx", "onnx", input_size=size), args.threads
        )
    full_path = folder / f"w{max(widths)}.onnx"
    sliced = {
        w: session(
            runtime_sliced(folder / f"w{w}.onnx", full_path, folder / f"r{w}.onnx"), args.threads
        )
        for w in widths
    }
    zero = np.zeros(1, dtype=np.int64)
    sizes = {
        "switchable": path.stat().st_size,
        "full_width": (folder / f"w{max(widths)}.onnx").stat().st_size,
    }
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, *size), dtype=np.float32)
        for w in widths:
            feed = {"input": x, "width": np.asarray(w, dtype=np.float32)}
            # two pairs, each interleaved on its own: the run-time-sliced graph copies
            # megabytes of weights per call, which would also evict the other two's caches
            times = interleaved_timings(
                {
                    "switchable": lambda feed=feed: switchable.run(None, feed),
                    "single": lambda w=w, x=x: single[w].run(None, {"input": x}),
                },
                warmup=3,
                repeats=args.rounds,
            )
            sliced_times = interleaved_timings(
                {
                    "runtime_sliced": lambda w=w, x=x: sliced[w].run(
                        None, {"input": x, "zero_shift": zero}
                    ),
                    "single": lambda w=w, x=x: single[w].run(None, {"input": x}),
                },
                warmup=3,
                repeats=max(5, args.rounds // 2),
            )
            ratio = statistics.median(
                a / b for a, b in zip(times["switchable"], times["single"], strict=True)
            )
            row = {
                "width": w,
                "batch_size": batch,
                "switchable_ms": 1e3 * statistics.median(times["switchable"]),
                "single_ms": 1e3 * statistics.median(times["single"]),
                "runtime_sliced_ms": 1e3 * statistics.median(sliced_times["runtime_sliced"]),
                "ratio": ratio,
                "runtime_sliced_ratio": statistics.median(
                    a / b
                    for a, b in zip(
                        sliced_times["runtime_sliced"], sliced_times["single"], strict=True
                    )
                ),
            }
            rows.append(row)
            print(
                f"batch {batch:>2}  width {w:<5g} switchable {row['switchable_ms']:8.2f} ms  "
                f"one-width {row['single_ms']:8.2f} ms  ratio {ratio:.3f}  run-time sliced "
                f"{row['runtime_sliced_ms']:8.2f} ms ({row['runtime_sliced_ratio']:.2f}x)",
                flush=True,
            )
    size_ratio = sizes["switchable"] / sizes["full_width"]
    print(
        f"file size: switchable {sizes['switchable'] / 1e6:.2f} MB, full-width export "
        f"{sizes['full_width'] / 1e6:.2f} MB, ratio {size_ratio:.3f} (target <= {TARGET})"
    )
    result = {
        "model": args.model,
        "input_size": list(size),
        "threads": args.threads,
        "rounds": args.rounds,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "target": TARGET,
        "file_bytes": sizes,
        "size_ratio": size_ratio,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
