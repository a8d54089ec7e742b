"""Thread oversubscription: two concurrent work units on a small machine, with torch's default threads and with the
count the harness chooses (harness/engine/threads.py).

The unit is the quick job's dcgan training (the ``quick`` preset's generator options, embedded Colorized MNIST,
fp32 on the CPU) for a fixed number of steps, each in its own process (as Ray runs units; the data are prepared
once, and every process has built its networks before the timed parts start together):

- ``alone``: one unit with the harness's choice (the CPUs this process may use); ``alone, 1 thread`` for scale;
- ``2 × torch default``: two units, each with torch's default count (one thread per core of the machine) — the
  oversubscribed case;
- ``2 × pinned``: two units, each restricted to its own CPUs by the affinity mask (as ``taskset``, cpusets or Slurm
  do), the harness choosing from that mask;
- ``2 × ray reservation``: two units, unpinned, each with the CPUs a Ray task of ``cpus/2`` CPUs reserved.

Per unit, ``rate / alone`` at or above ``1 / 2`` means two concurrent units lose nothing to each other (the
machine's throughput is shared, not wasted). Ratios within one run are the result; absolute rates depend on what
else the machine runs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threads.py [--steps 40]

(``OMP_NUM_THREADS`` of the calling shell is removed for the workers: the cases set their counts themselves.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------------------- a worker


def worker(mode: str, cpus: list[int], data: str) -> None:
    """One unit: prepare, say ``ready``, wait for ``go`` on stdin, train, print a JSON line."""
    import torch

    default = torch.get_num_threads()  # torch's own choice: OMP_NUM_THREADS is not set in a worker
    from harness.engine.progress import NullReporter
    from harness.engine.threads import choose_threads
    from harness.imageset import ImageSet
    from harness.interfaces import Runtime
    from plugins.generators.dcgan import DCGAN

    if mode == "pinned":
        os.sched_setaffinity(0, cpus)
    if mode == "default":
        threads = default
    elif mode == "ray":
        threads = choose_threads(reserved_cpus=len(cpus)).count
    elif mode == "one":
        threads = 1
    else:  # alone, pinned: the CPUs this process may use
        threads = choose_threads(environ={}).count
    torch.set_num_threads(threads)

    saved = torch.load(data)
    train = ImageSet.create(saved["images"], saved["labels"])
    torch.manual_seed(0)
    gen = DCGAN(DCGAN.Options(**saved["options"]), num_classes=saved["num_classes"], channels=train.shape[0],
                image_size=train.shape[1], class_names=saved["class_names"],
                runtime=Runtime("cpu", "fp32", 0, NullReporter(), Path(data).parent))
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    stats = gen.fit(train)
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "threads": threads, "default": default, "images": stats["images_seen"],
                      "seconds": seconds, "images_per_s": stats["images_seen"] / seconds}), flush=True)


def prepare(steps: int, folder: Path) -> Path:
    """The quick job's dcgan options (1 epoch) and the first ``steps × batch`` images of its training set."""
    import torch

    from harness.engine.stages import RunContext
    from harness.plugin.manager import default_plugins
    from harness.specs import build_spec, resolve_spec

    plugins = default_plugins()
    spec = resolve_spec(build_spec("quick", {"out": str(folder)}), plugins)
    if spec.generator.name != "dcgan":
        raise SystemExit(f"the quick preset's generator is {spec.generator.name}, this benchmark trains dcgan")
    ctx = RunContext(spec, spec.run_dir, plugins)
    options = {**spec.generator.options, "epochs": 1}
    n = min(steps * options["batch_size"], len(ctx.data.train))
    path = folder / "data.pt"
    torch.save({"images": ctx.data.train.images[:n].clone(), "labels": ctx.data.train.labels[:n].clone(),
                "options": options, "num_classes": ctx.data.num_classes,
                "class_names": tuple(ctx.data.class_names)}, path)
    return path


# --------------------------------------------------------------------------------------------------- the cases


def run_case(mode: str, cpu_sets: list[list[int]], data: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker", mode, "--cpus", ",".join(map(str, cpus)),
                          "--data", str(data)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for cpus in cpu_sets
    ]
    for p in procs:  # every unit prepared before any starts: the timed parts overlap
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker {mode} failed to start: {line!r}")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    rows = []
    for p in procs:
        text, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"worker {mode} exited with {p.returncode}")
        rows.append(json.loads(text.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="dcgan steps per unit (batch 64)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, [int(c) for c in args.cpus.split(",")], args.data)
        return 0

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs at least 2 CPUs", file=sys.stderr)
        return 2
    half = len(cpus) // 2
    t_start = time.perf_counter()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        data = prepare(args.steps, Path(out))
        cases = [
            ("alone", "alone", [cpus]),
            ("alone, 1 thread", "one", [cpus]),
            ("2 × torch default", "default", [cpus, cpus]),
            ("2 × pinned", "pinned", [cpus[:half], cpus[half:2 * half]]),
            ("2 × ray reservation", "ray", [cpus[:half], cpus[half:2 * half]]),
        ]
        results = [(label, run_case(mode, sets, data)) for label, mode, sets in cases]
    alone = results[0][1][0]["images_per_s"]
    print(f"{len(cpus)} CPUs (affinity), torch default {results[2][1][0]['default']} threads; dcgan quick options, "
          f"fp32, {args.steps} steps × batch 64 per unit; load average before {load[0]:.2f}")
    print(f"{'case':<22} {'threads/unit':>12} {'img/s per unit':>16} {'per unit / alone':>17}")
    for label, rows in results:
        rates = [r["images_per_s"] for r in rows]
        threads = "/".join(str(r["threads"]) for r in rows)
        per_unit = " / ".join(f"{x:.0f}" for x in rates)
        print(f"{label:<22} {threads:>12} {per_unit:>16} {min(rates) / alone:>16.2f}×")
    print(f"(target for two concurrent units: per unit / alone ≥ 0.50; wall {time.perf_counter() - t_start:.0f} s, "
          f"load average after {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
