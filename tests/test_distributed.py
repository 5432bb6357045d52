"""Data parallel training: 2 gloo processes under torchrun on CPU.

What is compared: DDP averages the ranks' gradients, and every rank's BN normalises with its
own micro-batch's statistics. The single-process reference therefore runs, for every width of
a step, each rank's micro-batch (same sampler shards) through the network separately and
backpropagates half of each loss: the same per-sample grouping, the same averaged gradient.
Parameters must agree within float tolerance (BN running statistics are per rank in DDP and
are not compared).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from slimmable.calibrate import calibrate
from slimmable.checkpoint import load_checkpoint
from slimmable.data import build_datasets
from slimmable.data.loader import calibration_batches, steps_per_epoch, train_loader
from slimmable.train import World, build_model, build_optimizer, build_schedule, load_config
from slimmable.train.engine import cpu_threads, seed_everything
from slimmable.train.losses import cross_entropy, soft_cross_entropy
from slimmable.train.optim import set_lr
from slimmable.train.sampling import WidthSampler
from slimmable.width import set_width

SRC = Path(__file__).resolve().parents[1] / "src"

CONFIGS = {
    "slimmable": """
model: {name: s_small_cnn, widths: [0.25, 0.5, 1.0]}
train: {mode: slimmable}
""",
    "universal": """
model: {name: us_small_cnn, width_range: [0.25, 1.0]}
train: {mode: universal, num_sample_widths: 3}
calibrate: {images: 300, batch_size: 64}
""",
}
COMMON = [
    "data.augment=none",
    "train.epochs=1",
    "train.batch_size=96",  # per rank: 7 steps of 2 x 96 images
    "train.lr=0.1",
    "train.progress=false",
    "train.threads=1",
    "train.label_smoothing=0.1",
    "eval.every=0",
    "eval.widths=[0.25, 1.0]",
]


def torchrun(cfg: Path, out: Path, overrides: list[str], *, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "slimmable", "train", str(cfg), "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def reference(cfg_path: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    """One process, two micro-batches per step (the ranks' shards), gradients averaged.

    Returns the parameters and, for a US-Net, the BN statistics calibrated in this one process.
    """
    cfg = load_config(cfg_path, overrides)
    tc = cfg.train
    with cpu_threads(1):
        seed_everything(tc.seed)
        train_set, _, info = build_datasets("digits", augment="none", seed=tc.seed)
        model, _ = build_model(cfg, info)
        opt = build_optimizer(model, tc)
        worlds = [World(rank=r, world_size=2) for r in range(2)]
        n_steps = steps_per_epoch(train_set, tc.batch_size, 2)
        schedule = build_schedule(tc, n_steps)
        sampler = WidthSampler(model, tc.mode, tc.num_sample_widths, tc.nonuniform, seed=tc.seed)
        loaders = [
            train_loader(train_set, tc.batch_size, seed=tc.seed, epoch=0, rank=w.rank, world_size=2)
            for w in worlds
        ]
        model.train()
        for step, shards in enumerate(zip(*loaders, strict=True)):
            set_lr(opt, schedule(step))
            opt.zero_grad(set_to_none=True)
            teachers: list = [None, None]
            for w in sampler():
                for r, (x, y) in enumerate(shards):
                    with set_width(model, w):
                        logits = model(x)
                    if teachers[r] is None:
                        loss = cross_entropy(logits, y, tc.label_smoothing)
                        teachers[r] = logits.detach().softmax(dim=1)
                    else:
                        loss = soft_cross_entropy(logits, teachers[r])
                    (loss / 2).backward()
            opt.step()
        out = {k: v.detach() for k, v in model.named_parameters()}
        if tc.mode == "universal":  # all calibration batches in one process, then compare
            batches = calibration_batches(train_set, cfg.calibrate.images, 64, seed=tc.seed)
            calibrate(model, batches, [0.25, 1.0])
            out.update({k: v for k, v in model.state_dict().items() if "calib_" in k})
    return out


def test_two_ranks_match_one_process_with_two_micro_batches(tmp_path):
    """US-Net: weights after 7 steps, and BN statistics calibrated on both ranks' shards."""
    mode = "universal"
    cfg = tmp_path / f"{mode}.yaml"
    cfg.write_text(CONFIGS[mode])
    run = torchrun(cfg, tmp_path / "run", COMMON)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("largest width top-1") == 1  # rank 0 alone prints the summary
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["finished"] and ckpt["step"] == 7
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    expected = reference(cfg, COMMON)
    for key, value in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-3, atol=1e-4)
    assert any("calib_mean" in k for k in expected)
    assert sorted(ckpt["calibrated"]) == [0.25, 1.0]
    assert ckpt["eval"] and all(0.0 <= r["top1"] <= 1.0 for r in ckpt["eval"])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_killed_rank_leaves_a_loadable_checkpoint(tmp_path):
    """S-Net (switchable BN: DDP finds the unused BN parameters of the last width)."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(CONFIGS["slimmable"])
    overrides = [*COMMON, "train.epochs=200", "train.batch_size=32"]
    proc = torchrun(cfg, tmp_path / "run", overrides, wait=False)
    ckpt_path = tmp_path / "run" / "checkpoint.pt"
    try:
        deadline = time.time() + 120
        while not ckpt_path.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert ckpt_path.exists(), "no checkpoint written"
        workers = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert workers, "rank 1 not found"
        os.kill(workers[0], signal.SIGKILL)  # mid-run, possibly while rank 0 writes
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0  # torchrun reports the lost rank
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["step"] > 0 and ckpt["step"] % 22 == 0  # written at an epoch's end, whole
    assert not list(ckpt_path.parent.glob(".checkpoint.pt.*.tmp"))


def test_one_gradient_all_reduce_per_step_however_many_widths(tmp_path):
    """DDP decides in forward whether backward all-reduces: ``width_sync`` must cover both."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from slimmable.models import create_model
    from slimmable.train.distributed import width_sync

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = create_model("us_small_cnn", num_classes=10, in_chans=1)
        net = DistributedDataParallel(model, bucket_cap_mb=1000)  # one bucket: one call per sync
        syncs = []

        def count(state, bucket):
            syncs.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        net.register_comm_hook(None, count)
        x = torch.randn(8, 1, 8, 8)
        widths = [1.0, 0.25, 0.6, 0.4]
        for step in range(2):
            for i, w in enumerate(widths):
                with width_sync(net, last=i == len(widths) - 1), set_width(model, w):
                    net(x).square().mean().backward()
            assert len(syncs) == step + 1  # one all-reduce for the four widths of this step
    finally:
        dist.destroy_process_group()


CALIBRATE_SCRIPT = """
import sys, torch
from slimmable import create_model
from slimmable.data import build_datasets, calibration_batches
from slimmable.train.distributed import calibrate_sharded, init_world, shutdown

world = init_world(torch.device("cpu"))
train, _, _ = build_datasets("digits", augment="none")
for images in (64, 300):
    torch.manual_seed(0)
    model = create_model("us_small_cnn", num_classes=10, in_chans=1)
    batches = calibration_batches(train, images=images, batch_size=64, seed=0)
    calibrate_sharded(model, batches, [0.25, 0.6, 1.0], world)
    if world.rank == 0:
        torch.save(model.state_dict(), f"{sys.argv[1]}/rank0_{images}.pt")
shutdown(world)
"""


def test_calibration_with_more_ranks_than_batches_equals_one_process(tmp_path):
    """3 ranks, 1 batch (two ranks get none) and 3 ranks, 5 uneven batches: the statistics
    one process calibrating on all the batches stores."""
    from slimmable import calibrate, create_model
    from slimmable.data import calibration_batches

    script = tmp_path / "calibrate.py"
    script.write_text(CALIBRATE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    run = subprocess.run(
        [*cmd, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout + run.stderr
    train, _, _ = build_datasets("digits", augment="none")
    for images in (64, 300):
        torch.manual_seed(0)
        model = create_model("us_small_cnn", num_classes=10, in_chans=1)
        calibrate(model, calibration_batches(train, images, 64, seed=0), [0.25, 0.6, 1.0])
        got = torch.load(tmp_path / f"rank0_{images}.pt", weights_only=True)
        for key, value in model.state_dict().items():
            if "calib_" in key:
                torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
        assert got["features.1.calib_batches"].tolist() == [-(-images // 64)] * 3
