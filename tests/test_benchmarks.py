"""The GPU benchmark keeps working where CI runs it: on the CPU at its tiny size, every unit of the paper preset in
its table, the projections and the harness-vs-bare ratios printed, the GPU-only parts saying n/a."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

UNITS = [
    "dcgan: train",
    "dcgan: sample",
    *[f"classifier {m}: {what}" for m in ("lenet", "alexnet", "vgg19", "resnet50", "mobilenet-v3")
      for what in ("train", "evaluate")],
    "oracle resnet50: evaluate",
    "filter uncertainty (5 classifiers)",
    "FID features, batch 32 (random-conv TEST backbone, NOT Inception)",
    "FID + KID arithmetic",
]


def test_gpu_benchmark_runs_on_the_cpu_at_the_tiny_size():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for unit in UNITS:
        row = next((line for name, line in rows.items() if name.startswith(unit)), None)
        assert row is not None, f"{unit!r} missing from\n{out}"
        cells = [c.strip() for c in row.strip("| ").split(" | ")]
        assert float(cells[3].replace(",", "")) > 0  # images/s
        assert cells[4:] == ["n/a", "n/a"]  # no GPU memory or busy share on the CPU
    assert re.search(r"one generation: \d+\.\d min", out)
    assert re.search(r"whole study \(\d+ units: 3 seeds × \(generation 0 \+ 10 generations\).*: \d+\.\d\d h", out)
    assert len(re.findall(r"ratio \d+\.\d\d", out)) == 5
    assert "fractional GPU (Ray num_gpus < 1): n/a on the CPU" in out
