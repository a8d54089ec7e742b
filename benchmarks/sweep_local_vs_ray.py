"""Wall time of one small sweep on the ``local`` executor against ``ray`` on this machine (not a test).

The sweep: 2 runs (``loop.mix_ratio`` 0.25 / 0.5) × 2 classifiers (lenet, timm:test_resnet) × 2 generations,
one seed each, dcgan (width 8, 1 epoch) on 600 embedded Colorized-MNIST digits — every stage of the loop, small.

    .venv/bin/python benchmarks/sweep_local_vs_ray.py [--cpus 2] [--generations 2] [--out DIR]

Runs it three times into fresh directories: ``local`` with torch's default thread count, ``local`` with one
thread (the numerics of a 1-CPU Ray task, so its results files equal Ray's), and ``ray`` on a private local
instance with ``--cpus`` CPUs and one CPU per unit (the Ray start-up is timed apart). Then, from the units'
own measured durations (``result.json`` → ``timing.seconds`` of the 1-thread local run), it replays the plan's
dependency graph with a greedy list scheduler for N = 1, 2, 4, 8 and unlimited parallel slots (GPUs): the
speed-up the unit structure allows, before Ray's per-task overhead.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from harness.scale.executor import LocalExecutor, RayExecutor  # noqa: E402
from harness.engine.plan import RESULT, plan  # noqa: E402
from harness.plugin.manager import create_plugin_manager  # noqa: E402
from harness.scale.sweep import build_sweep, parse_sweep, run_sweep  # noqa: E402


def sweep_config(generations: int) -> dict:
    base = {
        "dataset": {"name": "colored-mnist", "options": {"source": "embedded", "train_size": 600, "test_size": 200}},
        "generator": {"name": "dcgan", "options": {"width": 8, "epochs": 1}},
        "classifiers": ["lenet", "timm:test_resnet"],
        "filter": {"name": "uncertainty", "keep": 0.8},
        "loop": {"generations": generations, "samples_per_generation": 200, "mix_ratio": 0.5},
        "training": {"max_epochs": 1, "batch_size": 64},
        "metrics": {"fid": {"backbone": "none"}, "oracle": {"classifier": "lenet", "max_epochs": 1},
                    "bootstrap": 20},
        "seeds": [0],
    }
    return {"base": base, "grid": {"loop.mix_ratio": [0.25, 0.5]}}


def timed_sweep(plugins, data, out: Path, executor) -> tuple[float, list]:
    runs = build_sweep(parse_sweep(data), plugins, out=out)
    t0 = time.perf_counter()
    outcomes = run_sweep(runs, plugins, executor=executor)
    seconds = time.perf_counter() - t0
    bad = [o for o in outcomes if o.status != "complete"]
    if bad:
        raise SystemExit(f"run {bad[0].run.index} did not complete: {bad[0].error!r}")
    return seconds, outcomes


def results_equal(a: list, b: list) -> bool:
    def strip(path: Path) -> dict:
        data = json.loads(path.read_text())
        data.pop("timing")
        return data

    return all(strip(x.run.results_path) == strip(y.run.results_path) for x, y in zip(a, b, strict=True))


def simulate(outcomes: list, slots: int | None) -> float:
    """Makespan of all runs' units on ``slots`` parallel workers (None: unlimited).

    Event-driven list scheduling: whenever a slot is free, the ready unit (all dependencies finished) that comes
    first in plan order starts; each unit takes the seconds it took in the measured run.
    """
    order, seconds, deps, users = [], {}, {}, {}
    for o in outcomes:
        for u in plan(o.run.spec):
            key = (o.run.index, u.key)
            order.append(key)
            deps[key] = {(o.run.index, d) for d in u.deps}
            for d in deps[key]:
                users.setdefault(d, []).append(key)
            seconds[key] = json.loads((u.directory(o.run.run_dir) / RESULT).read_text())["timing"]["seconds"]
    rank = {k: i for i, k in enumerate(order)}
    waiting = {k: len(v) for k, v in deps.items()}
    ready = [(rank[k], k) for k, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    running: list = []
    free, now = slots or len(order), 0.0
    while ready or running:
        while free and ready:
            _, key = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[key], rank[key], key))
            free -= 1
        now, _, key = heapq.heappop(running)
        free += 1
        for user in users.get(key, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (rank[user], user))
    return now


def warm_up(plugins, data) -> None:
    """Import and load everything once (torch kernels, timm, the dataset) so no timed sweep pays for it."""
    from harness.engine.stages import RunContext

    run = build_sweep(parse_sweep(data), plugins, out=Path(tempfile.mkdtemp()))[0]
    ctx = RunContext(run.spec, run.run_dir, plugins)
    images = ctx.data.train.images[:64]
    for name in run.spec.classifier_names:
        ctx.new_classifier(name).logits(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the run directories go (default: a temp dir)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    for sub in ("local", "local-1thread", "ray"):
        shutil.rmtree(out / sub, ignore_errors=True)
    plugins = create_plugin_manager()
    data = sweep_config(args.generations)
    runs = build_sweep(parse_sweep(data), plugins, out=out / "local")
    n_units = sum(len(plan(r.spec)) for r in runs)

    default_threads = torch.get_num_threads()
    warm_up(plugins, data)
    local_s, _ = timed_sweep(plugins, data, out / "local", LocalExecutor())
    torch.set_num_threads(1)
    local1_s, local1 = timed_sweep(plugins, data, out / "local-1thread", LocalExecutor())
    torch.set_num_threads(default_threads)

    executor = RayExecutor(num_cpus=args.cpus)
    t0 = time.perf_counter()
    executor.start(plugins)
    start_s = time.perf_counter() - t0
    ray_s, on_ray = timed_sweep(plugins, data, out / "ray", executor)
    executor.close()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}")
    print(f"sweep: {len(runs)} runs × 2 classifiers × {args.generations} generations = {n_units} work units")
    print()
    print("| executor | wall time | speed-up vs local |")
    print("| --- | ---: | ---: |")
    print(f"| local, torch default threads ({default_threads}) | {local_s:.1f} s | 1.00× |")
    print(f"| local, 1 thread | {local1_s:.1f} s | {local_s / local1_s:.2f}× |")
    print(f"| ray, {args.cpus} CPUs, 1 CPU per unit (+ {start_s:.1f} s Ray start) | {ray_s:.1f} s "
          f"| {local_s / ray_s:.2f}× ({local_s / (ray_s + start_s):.2f}× with start) |")
    print()
    print(f"results files identical (timing aside), ray vs local 1 thread: {results_equal(on_ray, local1)}")
    print()
    one = simulate(local1, 1)
    print("replayed schedule from the units' measured durations (local, 1 thread):")
    print()
    print("| parallel slots (GPUs) | makespan | speed-up |")
    print("| ---: | ---: | ---: |")
    for slots in (1, 2, 4, 8, None):
        span = simulate(local1, slots)
        print(f"| {slots or 'unlimited'} | {span:.1f} s | {one / span:.2f}× |")


if __name__ == "__main__":
    main()
