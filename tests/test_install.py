"""Installing: compatible ranges in pyproject.toml, the exact tested versions in constraints.txt (what CI and the
README's two commands install), and code paths that depend on the torch version."""

from __future__ import annotations

import importlib.metadata as md
import tomllib
import types

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    p = project()
    return [Requirement(r) for r in p["dependencies"] + sum(p["optional-dependencies"].values(), [])]


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = Version(version)
    return pins


def test_dependencies_are_ranges_with_a_lower_bound():
    for req in (Requirement(r) for r in project()["dependencies"]):
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and "==" not in ops and "~=" not in ops, f"{req}: give a range with a lower bound"


def test_constraints_pin_every_direct_dependency_inside_its_range():
    pins = constraints()
    for req in requirements():
        key = canonicalize_name(req.name)
        assert key in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[key], prereleases=True), f"{req.name}=={pins[key]} is outside {req}"
    assert pins["torch"] == Version("2.14.1") and pins["torchvision"] == Version("0.29.1")


def test_the_environment_is_the_tested_one():
    """The installed versions are the pinned ones (regenerate constraints.txt after upgrading the environment)."""
    differ = {}
    for key, version in constraints().items():
        try:
            installed = Version(md.version(key))
        except md.PackageNotFoundError:
            continue
        if installed.public != version.public:
            differ[key] = (str(installed), str(version))
    assert differ == {}


def test_ci_and_the_readme_install_with_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -c constraints.txt -e '.[dev]'" in ci
    readme = (REPO / "README.md").read_text()
    assert readme.count("pip install -c constraints.txt -e '.[dev]'") == 2


@pytest.mark.parametrize("modern", [True, False])
def test_exact_fp32_features_on_any_supported_torch(monkeypatch, modern):
    """FID switches TF32 off with torch's fp32_precision settings, or allow_tf32 on a torch that predates them."""
    import torch

    from harness.measure import fid

    if modern:
        cudnn = types.SimpleNamespace(conv=types.SimpleNamespace(fp32_precision="tf32"), allow_tf32=True)
        matmul = types.SimpleNamespace(fp32_precision="tf32", allow_tf32=True)
        flags = lambda: (cudnn.conv.fp32_precision, matmul.fp32_precision)  # noqa: E731
        inside, outside = ("ieee", "ieee"), ("tf32", "tf32")
    else:
        cudnn = types.SimpleNamespace(allow_tf32=True)
        matmul = types.SimpleNamespace(allow_tf32=True)
        flags = lambda: (cudnn.allow_tf32, matmul.allow_tf32)  # noqa: E731
        inside, outside = (False, False), (True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    with fid._exact_fp32():
        assert flags() == inside
    assert flags() == outside
