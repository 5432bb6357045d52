"""AutoSlim on real data: searched channels against uniform widths at equal MACs.

For each seed: split the data into train / held-out / test, train a universally slimmable CNN
(sandwich rule, in-place distillation), then for each uniform width ``w`` search a nonuniform
configuration with at most the MACs of ``w`` (scored on the held-out training images) and compare
the test accuracy of both, with BN post-statistics calibrated for each. With ``--retrain`` both
configurations are also trained from scratch as plain networks (``autoslim_small_cnn``).

    PYTHONPATH=src python benchmarks/autoslim_digits.py --data digits --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimmable import autoslim, calibrate, set_width
from slimmable.data import build_datasets
from slimmable.models import make_kit
from slimmable.models.autoslim import autoslim_small_cnn
from slimmable.models.small_cnn import SmallCNN
from slimmable.search import MacsCounter, count_macs, get_channels
from slimmable.units import format_count
from slimmable.width import width_bounds, width_knobs


def load(name: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(train, test)`` image and label tensors of ``slimmable.data``'s fixed split, normalised
    and not augmented."""
    train_set, test_set, _ = build_datasets(name, augment="none")

    def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        return torch.stack(xs), torch.tensor(ys)

    return stack(train_set), stack(test_set)


def split(train, seed: int, held: float):
    """``(train, held-out)``: a seeded ``held`` fraction of the training images is held out."""
    x, y = train
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_held = int(len(x) * held)
    return (x[perm[n_held:]], y[perm[n_held:]]), (x[perm[:n_held]], y[perm[:n_held]])


def train(
    model,
    data,
    epochs: int,
    seed: int,
    sandwich: bool,
    nonuniform: bool = False,
    batch: int = 64,
    lr: float = 0.2,
):
    """Plain SGD; with ``sandwich``: largest, smallest and two random widths per batch, the
    smaller ones distilled from the largest (US-Nets); ``nonuniform``: the random widths are
    drawn per layer."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    x, y = data
    steps = epochs * (len(x) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    lo, hi = (0.0, 1.0)
    if sandwich:
        lo, hi = model.features[0].policy.lo, model.features[0].policy.hi
    knobs = list(width_knobs(model))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            widths = [hi, lo, rng.uniform(lo, hi), rng.uniform(lo, hi)] if sandwich else [None]
            if sandwich and nonuniform:
                widths[2:] = [{n: rng.uniform(lo, hi) for n in knobs} for _ in range(2)]
            soft = None
            for w in widths:
                if w is not None:
                    set_width(model, w)
                out = model(xb)
                if soft is None:
                    loss = F.cross_entropy(out, yb)
                    soft = out.softmax(1).detach()
                else:
                    loss = -(soft * out.log_softmax(1)).sum(1).mean()
                loss.backward()
            opt.step()
            sched.step()
    if sandwich:
        set_width(model, hi)
    return model


ROW_KEYS = (
    "uniform",
    "searched",
    "macs",
    "channels",
    "uniform_at_macs",
    "uniform_at_width",
    "uniform_scratch",
    "searched_scratch",
)


def uniform_width_at(model, input_size, macs: int, tol: float = 1e-4) -> float:
    """The largest uniform width (to ``tol``) whose MACs do not exceed ``macs``."""
    count = MacsCounter(model, input_size)
    lo, hi = width_bounds(model)
    if count(hi) <= macs:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) <= macs else (lo, mid)
    return round(lo, 4) if count(round(lo, 4)) <= macs else lo


@torch.no_grad()
def accuracy(model, width, calib, test) -> float:
    if width is not None:
        calibrate(model, [calib[0][i : i + 256] for i in range(0, 1024, 256)], [width])
    model.eval()
    if width is None:
        return (model(test[0]).argmax(1) == test[1]).float().mean().item()
    with set_width(model, width):
        return (model(test[0]).argmax(1) == test[1]).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=("digits", "mnist5k"))
    p.add_argument(
        "--setting", nargs="+", default=["32,1", "64,2", "128,2"],
        help="(channels, stride) of each conv of the small CNN",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--widths", type=float, nargs="+", default=[0.35, 0.5, 0.75])
    p.add_argument("--width-range", type=float, nargs=2, default=(0.25, 1.0))
    p.add_argument("--held", type=float, default=0.15, help="fraction of training images held out")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "loss"))
    p.add_argument("--per-mac", action="store_true", help="harm per MAC saved")
    p.add_argument("--nonuniform", action="store_true", help="train per-layer random widths")
    p.add_argument("--retrain", action="store_true", help="also train both from scratch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/autoslim_digits.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    full_train, te = load(args.data)
    setting = [tuple(int(v) for v in layer.split(",")) for layer in args.setting]
    input_size = tuple(te[0].shape[1:])
    rows: dict[float, dict] = {
        w: {key: [] for key in ROW_KEYS} | {"uniform_macs": 0} for w in args.widths
    }
    start = time.perf_counter()
    search_s = 0.0
    for seed in args.seeds:
        tr, held = split(full_train, seed, args.held)
        torch.manual_seed(seed)
        model = SmallCNN(make_kit(width_range=args.width_range), 10, 1, setting)
        train(model, tr, args.epochs, seed, sandwich=True, nonuniform=args.nonuniform)
        targets = [count_macs(model, input_size, w) for w in args.widths]
        t = time.perf_counter()
        n_held = len(held[0])
        held_batches = [(held[0][i : i + 128], held[1][i : i + 128]) for i in range(0, n_held, 128)]
        result = autoslim(model, held_batches, targets, metric=args.metric, per_mac=args.per_mac)
        search_s += time.perf_counter() - t
        for w, target in zip(args.widths, targets, strict=True):
            found = result.result(target)
            row = rows[w]
            row["uniform_macs"] = target
            row["macs"].append(found.macs)
            row["channels"].append(found.channels)
            row["uniform"].append(accuracy(model, w, tr, te))
            row["searched"].append(accuracy(model, found.width_map, tr, te))
            # the uniform width with as many MACs as the searched network, or fewer
            same = uniform_width_at(model, input_size, found.macs)
            row["uniform_at_macs"].append(accuracy(model, same, tr, te))
            row["uniform_at_width"].append(same)
            if args.retrain:
                torch.manual_seed(seed)
                plain = autoslim_small_cnn(10, channels=found.channels, setting=setting)
                row["searched_scratch"].append(
                    accuracy(train(plain, tr, args.epochs, seed, False), None, tr, te)
                )
                with set_width(model, w):
                    uniform_channels = get_channels(model)
                torch.manual_seed(seed)
                plain = autoslim_small_cnn(10, channels=uniform_channels, setting=setting)
                row["uniform_scratch"].append(
                    accuracy(train(plain, tr, args.epochs, seed, False), None, tr, te)
                )
    elapsed = time.perf_counter() - start

    def ms(v: list[float]) -> str:
        if not v:
            return "-"
        sd = statistics.stdev(v) * 100 if len(v) > 1 else 0.0
        return f"{statistics.mean(v) * 100:.2f} ± {sd:.2f}"

    header = (
        "| uniform width | MACs | acc % | searched MACs | searched acc % "
        "| uniform at searched MACs: width | acc % |"
    )
    if args.retrain:
        header += " uniform, scratch % | searched, scratch % |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for w in args.widths:
        r = rows[w]
        macs = format_count(statistics.mean(r["macs"]))
        same = statistics.mean(r["uniform_at_width"])
        line = (
            f"| {w:g} | {format_count(r['uniform_macs'])} | {ms(r['uniform'])} | {macs}"
            f" | {ms(r['searched'])} | {same:.3f} | {ms(r['uniform_at_macs'])} |"
        )
        if args.retrain:
            line += f" {ms(r['uniform_scratch'])} | {ms(r['searched_scratch'])} |"
        print(line)
    print(
        f"\nseeds {args.seeds}, {len(te[0])} test images each; search {search_s:.1f}s total, "
        f"all {elapsed:.0f}s"
    )
    for w in args.widths:
        print(f"channels at {w:g}: {rows[w]['channels']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": {str(k): v for k, v in rows.items()},
                "search_seconds": search_s,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
