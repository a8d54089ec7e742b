"""torch's intra-op thread count: chosen from --threads, a Ray task's CPUs, OMP_NUM_THREADS or the CPUs the process
may use (affinity, cgroup quota read from fake /proc and /sys files), applied by the executors, recorded per unit
and in the results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.engine.threads import ThreadChoice, available_cpus, cgroup_cpu_limit, choose_threads, torch_threads
from tests.conftest import tiny_config

AFFINITY = len(os.sched_getaffinity(0))


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_a_cgroup_v2_quota_caps_the_cpus_the_smallest_along_the_path(tmp_path):
    root = tmp_path / "cg"
    proc = fake_proc(tmp_path, "0::/user.slice/job-1\n",
                     [f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"])
    write(root / "user.slice" / "job-1" / "cpu.max", "250000 100000")
    write(root / "user.slice" / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(proc) == 2.5
    write(root / "user.slice" / "cpu.max", "50000 100000")  # a parent's quota binds too
    assert cgroup_cpu_limit(proc) == 0.5
    assert available_cpus(proc) == 1  # rounded up, at least 1


def test_a_cgroup_v1_cpu_quota_under_a_mount_root(tmp_path):
    mount = tmp_path / "cpu,cpuacct"
    proc = fake_proc(tmp_path, "12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n", [
        f"40 30 0:33 /docker {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
        f"41 30 0:34 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
    ])
    write(mount / "abc" / "cpu.cfs_quota_us", "100000")
    write(mount / "abc" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(proc) == 1.0
    assert available_cpus(proc) == 1
    write(mount / "abc" / "cpu.cfs_quota_us", "-1")  # no quota
    assert cgroup_cpu_limit(proc) is None
    assert available_cpus(proc) == AFFINITY


def test_no_cgroup_files_or_no_quota_means_the_affinity_mask(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    root = tmp_path / "cg"
    proc = fake_proc(tmp_path, "0::/\n", [f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw"])
    write(root / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(proc) is None
    assert available_cpus(proc) == AFFINITY


def test_the_choice_order_threads_flag_ray_reservation_env_cpus(tmp_path):
    proc = tmp_path / "no-proc"
    env = {"OMP_NUM_THREADS": "3"}
    assert choose_threads(5, reserved_cpus=2.0, environ=env, proc=proc) == ThreadChoice(5, "--threads")
    assert choose_threads(None, reserved_cpus=2.7, environ=env, proc=proc) == ThreadChoice(2, "ray reservation")
    assert choose_threads(None, reserved_cpus=0.25, environ=env, proc=proc) == ThreadChoice(1, "ray reservation")
    assert choose_threads(None, environ=env, proc=proc) == ThreadChoice(3, "OMP_NUM_THREADS")
    for bad in ("", "0", "-2", "two"):
        assert choose_threads(None, environ={"OMP_NUM_THREADS": bad}, proc=proc) == ThreadChoice(AFFINITY, "cpus")


def test_a_non_positive_thread_count_is_a_config_error():
    from harness.errors import ConfigError
    from harness.scale.executor import create_executor

    with pytest.raises(ConfigError, match="--threads"):
        choose_threads(0)
    with pytest.raises(ConfigError, match="--threads"):
        create_executor("local", torch_threads=-1)


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_the_local_executor_runs_units_with_the_count_and_records_it(tiny_spec, plugins):
    from harness import loop
    from harness.engine.plan import RESULT, plan
    from harness.scale.executor import LocalExecutor

    spec = tiny_spec(loop={"generations": 1})
    with torch_threads(2):  # the process's count, restored after the run
        results = loop.run(spec, plugins, executor=LocalExecutor(torch_threads=1))
        assert torch.get_num_threads() == 2
    assert results.provenance.torch_threads == [1]
    for u in plan(spec):
        assert json.loads((u.directory(spec.run_dir) / RESULT).read_text())["timing"]["threads"] == 1


def test_bench_run_threads_zero_is_one_line_and_exit_2(tmp_path):
    from harness.cli import app

    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config()))
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--quiet",
                                 "--threads", "0"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --threads must be a positive integer, got 0"
    assert not (tmp_path / "runs").exists()

