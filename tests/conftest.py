"""Shared fixtures: tiny real specs, a fresh plugin manager per test, the shared real data folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$BENCH_DATA_ROOT`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("BENCH_DATA_ROOT", REPO.parent / "shared" / "data"))


def tiny_config(**over: Any) -> dict[str, Any]:
    """A spec small enough to run end to end in seconds on 2 CPU cores, on real (embedded) MNIST digits."""
    from harness.specs import deep_merge

    base = {
        "dataset": {"name": "colored-mnist", "options": {"source": "embedded", "train_size": 600, "test_size": 200}},
        "generator": {"name": "dcgan", "options": {"width": 8, "epochs": 1}},
        "classifiers": ["lenet"],
        "filter": {"name": "uncertainty", "keep": 0.8},
        "loop": {"generations": 2, "samples_per_generation": 200, "mix_ratio": 0.5},
        "training": {"max_epochs": 1, "batch_size": 64},
        "metrics": {"fid": {"backbone": "none"}, "oracle": {"classifier": "lenet", "max_epochs": 1},
                    "bootstrap": 20},
        "seeds": [0],
    }
    return deep_merge(base, over)


@pytest.fixture
def plugins():
    from harness.plugin.manager import create_plugin_manager

    return create_plugin_manager()


@pytest.fixture
def tiny_spec(tmp_path, plugins):
    from harness.specs import build_spec, resolve_spec

    def make(**over: Any):
        return resolve_spec(build_spec(None, tiny_config(out=str(tmp_path / "runs"), **over)), plugins)

    return make
