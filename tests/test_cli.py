"""The CLI end to end, on tiny real runs: results on stdout, one-line errors with exit 2, kill -9 and resume,
and a third-party plugin installed with pip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import REPO, tiny_config

BENCH = [sys.executable, "-c", "from harness.cli import main; main()"]


def write_config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_config(**over)))
    return path


def strip_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("timing")
    return data


def test_run_prints_only_the_results_path_on_stdout(tmp_path):
    cfg = write_config(tmp_path)
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip())
    assert path.name == "results.json" and path.exists()

    import jsonschema

    from harness.publish.results import SCHEMA_PATH, load_results

    data = json.loads(path.read_text())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    results = load_results(path)
    assert results.status == "complete" and len(results.generations) == 3
    assert results.provenance.dataset_source["sha256"]
    assert results.amplification is not None and len(results.amplification.per_classifier["lenet"].A) == 2
    for g in results.generations[1:]:
        assert 0.0 <= g.generator.per_seed[0].q <= 1.0 and g.generator.per_seed[0].u is not None


def test_flags_override_the_config_file(tmp_path):
    cfg = write_config(tmp_path)
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--generations", "1", "--seeds", "3-4", "--keep",
                                 "0.5", "--set", "loop.mix_ratio=0.25", "--dry-run"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["spec"]["loop"]["generations"] == 1 and out["spec"]["seeds"] == [3, 4]
    assert out["spec"]["filter"]["keep"] == 0.5 and out["spec"]["loop"]["mix_ratio"] == 0.25
    assert "seed-4/gen-001/evaluate" in out["units"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--generator", "dcgna"], "Did you mean 'dcgan'"),
        (["run", "--classifier", "nope"], "unknown classifier 'nope'"),
        (["run", "--generations", "-2"], "loop.generations"),
        (["run", "--seeds", "a,b"], "--seeds expects integers"),
        (["run", "--preset", "fastest"], "unknown preset"),
        (["run", "--config", "/nonexistent/spec.toml"], "cannot read config file"),
        (["run", "--set", "dataset.options.bias=sometimes"], "options for dataset 'colored-mnist'"),
        (["run", "--set", "dataset.options.source=torchvision", "--data-root", "/nonexistent",
          "--generations", "0", "--out", "{tmp}"], "MNIST"),
        (["run", "--device", "cuda:0", "--generations", "0", "--out", "{tmp}"], "CUDA is not available"),
        (["list", "gizmos"], "unknown kind"),
        # issue 17: the command line's own mistakes, spec values no machine can hold, --out that cannot hold runs
        (["run", "--keep", "abc"], "Invalid value for '--keep'"),
        (["run", "--generations", "x"], "Invalid value for '--generations'"),
        (["run", "--nope"], "No such option: --nope"),
        (["run", "--config", "{tmp}"], "cannot read config file"),
        (["run", "--config", "{binary}"], "is not UTF-8 text"),
        (["run", "--set", "loop.samples_per_generation=1000000000000000"],
         "loop.samples_per_generation: Input should be less than or equal to 100000000"),
        (["run", "--set", "training.batch_size=100000000"], "training.batch_size: Input should be less than or equal"),
        (["run", "--set", "metrics.fid.samples=100000000"], "metrics.fid.samples: Input should be less than or equal"),
        (["run", "--seeds", "0-5000"], "seeds: Tuple should have at most 1000 items"),
        (["run", "--generations", "0", "--out", "{file}"], "--out {file} is a file"),
        (["run", "--generations", "0", "--out", "{file}/runs"], "--out {file}/runs cannot be created"),
        (["data", "check", "colored-mnist", "-o", "source=torchvision", "--data-root", "{tmp}"], "MNIST"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)))
    subs = {"{tmp}": str(tmp_path), "{file}": str(tmp_path / "file"), "{binary}": str(tmp_path / "binary.toml")}
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(BENCH + args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: chmod 555, or (as root, whom modes do not stop) sysfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder, Path("/sys/kernel")]
    for candidate in candidates:
        try:
            (candidate / "bench-probe").mkdir()
        except OSError:
            return candidate
        (candidate / "bench-probe").rmdir()
    pytest.skip("no folder this process cannot write in")


def test_out_inside_a_read_only_folder_is_one_line(tmp_path):
    out = read_only_folder(tmp_path) / "runs"
    proc = subprocess.run(BENCH + ["run", "--generations", "0", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"--out {out} cannot be created" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_unknown_timm_model_fails_before_any_work(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run(BENCH + ["run", "-c", "lenet", "-c", "timm:resnet51", "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "unknown timm model 'resnet51'. Did you mean" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no run directory, no oracle trained
    assert time.perf_counter() - t0 < 120


def test_data_check_ok_on_the_embedded_source():
    r = CliRunner().invoke(app, ["data", "check", "colored-mnist"])
    assert r.exit_code == 0 and "ok" in r.stdout


def test_list_and_plugins():
    r = CliRunner().invoke(app, ["list", "generators"])
    assert r.exit_code == 0 and "dcgan" in r.stdout.split()
    r = CliRunner().invoke(app, ["plugins"])
    assert r.exit_code == 0 and "bench-bias-loops" in r.stdout


@pytest.mark.slow
def test_kill_9_mid_generation_then_resume_gives_the_same_results(tmp_path):
    cfg = write_config(tmp_path, loop={"generations": 3})
    ref = subprocess.run(BENCH + ["run", "--config", str(cfg), "--out", str(tmp_path / "a"), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    reference = Path(ref.stdout.strip())

    out = tmp_path / "b"
    proc = subprocess.Popen(BENCH + ["run", "--config", str(cfg), "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run_dir = out / reference.parent.name
    deadline = time.time() + 300
    # kill once generation 2 is under way: its generator is trained but its classifiers are not
    while not (run_dir / "seed-0/gen-002/generator/result.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "seed-0/gen-002/classifier/lenet/result.json").exists()
    leftovers = [p for p in run_dir.rglob("*.tmp")]
    resumed = subprocess.run(BENCH + ["run", "--config", str(cfg), "--out", str(out), "-q"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert strip_timing(Path(resumed.stdout.strip())) == strip_timing(reference)
    del leftovers


@pytest.mark.slow
def test_a_pip_installed_third_party_plugin_runs(tmp_path):
    import shutil

    target, source = tmp_path / "site", tmp_path / "example_plugin"
    shutil.copytree(REPO / "tests" / "example_plugin", source)  # pip builds in the source tree; keep ours clean
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    listed = subprocess.run(BENCH + ["plugins"], capture_output=True, text=True, env=env, timeout=120)
    assert "bench-example-plugin" in listed.stdout and "0.3.0" in listed.stdout
    cfg = write_config(tmp_path, generator={"name": "class-mean", "options": {"noise": 0.5}}, loop={"generations": 1})
    r = subprocess.run(BENCH + ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "-q"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(Path(r.stdout.strip()).read_text())
    gen = next(p for p in results["provenance"]["plugins"] if p["kind"] == "generators")
    assert gen == {"kind": "generators", "name": "class-mean", "plugin": "example",
                   "distribution": "bench-example-plugin", "version": "0.3.0"}
    log = Path(r.stdout.strip()).parent / "logs" / "example.jsonl"
    assert len(log.read_text().splitlines()) == 2  # the lifecycle hook ran for generations 0 and 1
