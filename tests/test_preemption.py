"""SIGTERM finishes the current step, writes the checkpoint, exits 143; --resume continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from slimmable.checkpoint import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = """
model: {name: s_small_cnn, widths: [0.5, 1.0]}
data: {augment: none}
train: {mode: slimmable, epochs: 400, batch_size: 32, progress: false, threads: 1}
eval: {every: 0}
"""


def _train(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "slimmable", "train", str(cfg), "--out", str(out), *extra]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    proc = _train(cfg, out)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # inside the loop, mid-epoch most likely
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM" in text and "--resume" in text
    ckpt = load_checkpoint(out / "checkpoint.pt")
    stopped_at = ckpt["step"]
    assert stopped_at > 0 and not ckpt["finished"]

    # Resume for one more epoch (a shorter run of the same recipe is not allowed: the config
    # must match), then stop it the same way and check it went on from where it was.
    proc = _train(cfg, out, "--resume")
    try:
        deadline = time.time() + 120
        while load_checkpoint(out / "checkpoint.pt")["step"] == stopped_at:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, text
    assert load_checkpoint(out / "checkpoint.pt")["step"] > stopped_at
