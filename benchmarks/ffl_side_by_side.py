"""Wall time and memory of the reference code (cleverhans-lab/FairFeedbackLoops) against bench, at equal work.

FairFeedbackLoops (Wyllie et al. 2024) is not part of this repository and is never committed to it: clone it into
a temporary folder and install the three packages it needs that bench does not (``piq``, ``seaborn``, ``pynvml``
from ``nvidia-ml-py``) into a folder of their own:

    git clone https://github.com/cleverhans-lab/FairFeedbackLoops /tmp/ffl-src
    .venv/bin/pip install --no-deps --target /tmp/ffl-deps piq seaborn nvidia-ml-py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ffl_side_by_side.py --ffl /tmp/ffl-src --deps /tmp/ffl-deps \\
        --data-root ../shared/data --generations 2

The script copies the clone into a temporary folder and makes there the two edits the reference code needs to
run at all (its published ``prep_data/ci_mnist.py`` has the ``torch.save`` of the coloured data commented out,
so ``torch.load`` of ``train.pt`` fails; ``utils.get_save_dir`` uses a ``save_dir`` the README asks the user to
fill in), points its MNIST folder at ``--data-root``'s, and runs, one after the other, with the same thread count:

- FFL's SeqGenSeqClass ColoredMNIST setting: ``mc_train.py --dataset ColoredMNIST --use-reparation none`` for
  ``--generations`` generations, ``--epochs`` generator and classifier epochs (its other defaults: VAE batch 256,
  Adam 1e-3; SimpleCNN classifiers, batch 256, SGD 0.1; 50,001 train images);
- bench on the same setting: ``colored-mnist-wyllie`` (FFL's binary colouring) from the full MNIST, 50,000 train
  images, the ``vae`` generator (FFL's size: width 64, latent 20; batch 256, Adam 1e-3) and ``lenet`` (SGD 0.1,
  batch 256) for the same epochs, each generation training on the previous generator's 50,000 samples labelled
  by the previous classifier (``regime: replace``, ``mix_ratio: 1``, ``labeler: previous_classifier``), no
  filter, no control arm, FID off.

Equal work, unit by unit: FFL trains two annotators (label and colour) on the real data, then per generation a VAE
and a classifier; bench trains an oracle once, a generation-0 classifier on the real data, then per generation a
VAE and a classifier (and samples, and evaluates q and u with the oracle). It prints wall time, CPU time and the
peak resident memory of the largest process of each, and the ratios bench / FFL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.specs import LoopSpec  # noqa: E402

#: The two edits FFL needs to run (file, the published text, the replacement).
FFL_EDITS = (
    ("prep_data/ci_mnist.py",
     "        # if not os.path.exists(colored_mnist_dir):\n"
     "        #     os.makedirs(colored_mnist_dir)\n"
     "        # if is_train:\n"
     "        #     torch.save(train_set, os.path.join(colored_mnist_dir, 'train.pt'))\n"
     "        #     torch.save(valid_set, os.path.join(colored_mnist_dir, 'valid.pt'))\n"
     "        # else:\n"
     "        #     torch.save(train_set, os.path.join(colored_mnist_dir, 'test.pt'))",
     "        if not os.path.exists(colored_mnist_dir):\n"
     "            os.makedirs(colored_mnist_dir)\n"
     "        if is_train:\n"
     "            torch.save(train_set, os.path.join(colored_mnist_dir, 'train.pt'))\n"
     "            torch.save(valid_set, os.path.join(colored_mnist_dir, 'valid.pt'))\n"
     "        else:\n"
     "            torch.save(train_set, os.path.join(colored_mnist_dir, 'test.pt'))"),
    ("utils.py",
     "    # ENTER SAVE DIR PATH HERE\n",
     "    # ENTER SAVE DIR PATH HERE\n    save_dir = os.path.abspath('./ckpt')\n"),
)


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds, CPU seconds (with its children) and the peak RSS of its largest process (GiB),
    from this child's own resource usage (``wait4``), not that of every child so far."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{cmd[1]} exited with {code}; the end of {log}:\n" + "\n".join(tail))
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_gib": usage.ru_maxrss / 2**20}


def prepare_ffl(src: Path, work: Path, data_root: Path) -> Path:
    ffl = work / "ffl"
    shutil.copytree(src, ffl, ignore=shutil.ignore_patterns(".git"))
    for rel, old, new in FFL_EDITS:
        path = ffl / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{path}: the expected text is not there (another FFL version?); edit by hand")
        path.write_text(text.replace(old, new))
    (ffl / "ckpt").mkdir()
    (ffl / "data" / "ColoredMNIST").mkdir(parents=True)
    (ffl / "data" / "ColoredMNIST" / "MNIST").symlink_to((data_root / "MNIST").resolve())
    return ffl


def bench_config(generations: int, epochs: int, path: Path) -> Path:
    cfg = {
        "dataset": {"name": "colored-mnist-wyllie", "options": {"source": "torchvision", "train_size": 50_000}},
        "generator": {"name": "vae", "options": {"epochs": epochs, "batch_size": 256, "lr": 1e-3, "latent_dim": 20,
                                                 "width": 64}},  # FFL's VAE: 64 → 128 channels, latent 20
        "classifiers": ["lenet"],
        "filter": {"name": "none", "keep": 1.0},
        "loop": {"generations": generations, "regime": "replace", "mix_ratio": 1.0, "samples_per_generation": 50_000,
                 "labeler": "previous_classifier"},
        "training": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "batch_size": 256, "max_epochs": epochs,
                     "patience": epochs},
        "metrics": {"fid": {"backbone": "none"}, "oracle": {"max_epochs": epochs, "patience": epochs}},
        "seeds": [0],
    }
    if "control" in LoopSpec.model_fields:  # FFL trains no control arm
        cfg["loop"]["control"] = False
    path.write_text(json.dumps(cfg))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ffl", type=Path, required=True, help="a clone of cleverhans-lab/FairFeedbackLoops")
    ap.add_argument("--deps", type=Path, required=True, help="folder with piq, seaborn, pynvml (pip --target)")
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA_ROOT", "../shared/data")))
    ap.add_argument("--generations", type=int, default=2, help="FFL's --number-generations; bench's T")
    ap.add_argument("--epochs", type=int, default=1, help="generator and classifier epochs, both sides")
    ap.add_argument("--only", choices=["ffl", "bench"], help="run one side only")
    args = ap.parse_args(argv)

    threads = os.environ.get("OMP_NUM_THREADS", "1")
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ffl-side-") as tmp:
        work = Path(tmp)
        if args.only in (None, "ffl"):
            ffl = prepare_ffl(args.ffl, work, args.data_root)
            ffl_env = {**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",  # FFL torch.loads pickled PIL images
                       "PYTHONPATH": os.pathsep.join(map(str, [ffl, ffl / "prep_data", ffl / "plotting_scripts",
                                                               args.deps.resolve()]))}
            cmd = [sys.executable, "mc_train.py", "--dataset", "ColoredMNIST", "--use-reparation", "none",
                   "--number-generations", str(args.generations), "--gen-epochs", str(args.epochs),
                   "--cla-epochs", str(args.epochs), "--id", "side-by-side", "--save-freq", "100", "--eval-freq", "100"]
            rows["FFL mc_train.py"] = timed(cmd, ffl, ffl_env, work / "ffl.log")
        if args.only in (None, "bench"):
            cfg = bench_config(args.generations, args.epochs, work / "bench.json")
            cmd = [sys.executable, "-c", "from harness.cli import main; main()", "run", "--config", str(cfg),
                   "--data-root", str(args.data_root.resolve()), "--out", str(work / "runs"), "--quiet",
                   "--threads", threads]
            rows["bench run"] = timed(cmd, ROOT, env, work / "bench.log")
    load = os.getloadavg()[0]
    print(f"{args.generations} generations, {args.epochs} generator/classifier epoch(s), {threads} torch thread(s), "
          f"load average at the end {load:.2f}")
    print("| | wall | CPU time | peak RSS (largest process) |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {r['peak_gib']:.2f} GiB |")
    if len(rows) == 2:
        f, b = rows["FFL mc_train.py"], rows["bench run"]
        print(f"| bench / FFL | {b['wall_s'] / f['wall_s']:.2f} | {b['cpu_s'] / f['cpu_s']:.2f} | "
              f"{b['peak_gib'] / f['peak_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
