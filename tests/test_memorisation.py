"""Memorisation: the ratio-test copy share and nearest-training distances against held-out data, in
each domain's metric (pixels, Chamfer, time-series windows), and the training-time warning, report
and early stopping."""

import csv
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from toolkit.callbacks import (
    PassesWarning,
    PreviewCopies,
    copy_report,
    planned_passes,
    split_examples,
    training_callbacks,
)
from toolkit.domains.image import ImageDomain
from toolkit.metrics.memorisation import NearestTraining, memorisation, nearest_two, ratio_copies
from toolkit.metrics.pointcloud import chamfer_distance
from toolkit.module import DiffusionModule
from toolkit.train import CONF_DIR, train

generator = torch.Generator().manual_seed(0)


def jitter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A "model" that hands training examples back with a little noise."""
    return x + scale * torch.randn(x.shape, generator=generator)


def assert_copies(result):
    assert result.copy_share >= 0.95
    assert result.nearest_ratio < 0.2 and result.close_share >= 0.95


def assert_like_held_out(result):
    assert result.copy_share <= result.held_out_copy_share + 0.05
    assert 0.75 < result.nearest_ratio < 1.33
    assert result.close_share <= 0.2


# --- one test per metric space -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    datamodule = ImageDomain(net={}).datamodule(batch_size=64)
    return datamodule.train_set.tensors["x"], datamodule.val_set.tensors["x"]


def test_pixels_copies_and_unseen_digits(digits):
    train, held_out = digits
    reference = NearestTraining(train, held_out[:90])
    copies = reference.score(jitter(train[:200], 0.01))
    assert_copies(copies)
    unseen = reference.score(held_out[90:])  # real digits the model never saw
    assert_like_held_out(unseen)
    assert unseen.copy_share == 0.0


def ellipsoids(n: int, points: int = 96) -> torch.Tensor:
    """A known generator of point clouds: surfaces of ellipsoids with random axes."""
    axes = 0.3 + 0.7 * torch.rand(n, 1, 3, generator=generator)
    directions = torch.randn(n, points, 3, generator=generator)
    return axes * directions / directions.norm(dim=-1, keepdim=True)


def test_chamfer_copies_and_fresh_clouds():
    train = ellipsoids(80)
    reference = NearestTraining(train, ellipsoids(40), distance="chamfer")
    assert_copies(reference.score(jitter(train[:30], 0.002)))
    assert_like_held_out(reference.score(ellipsoids(40)))


def test_chamfer_distance_is_the_square_root_of_the_pointcloud_metric():
    clouds = ellipsoids(5)
    values, indices = nearest_two(clouds[:1], clouds[1:], "chamfer")
    direct = chamfer_distance(clouds[:1].expand(4, -1, -1), clouds[1:]).sqrt()
    torch.testing.assert_close(values[0], direct.sort().values[:2])
    assert indices[0].tolist() == direct.argsort()[:2].tolist()


def test_chamfer_shortlist_finds_the_exact_nearest_two():
    items, queries = ellipsoids(60, points=256), ellipsoids(20, points=256)
    exact = nearest_two(queries, items, "chamfer", coarse_points=10**6)  # every pair measured in full
    fast = nearest_two(queries, items, "chamfer", coarse_points=64, shortlist=10)
    assert (fast[0] >= exact[0] - 1e-6).all() and (fast[0] <= 1.02 * exact[0]).all()
    assert (fast[1] == exact[1]).all(dim=1).float().mean() >= 0.9
    copies = nearest_two(jitter(items[:10], 0.002), items, "chamfer", coarse_points=64, shortlist=10)
    assert copies[1][:, 0].tolist() == list(range(10))


def windows(n: int, features: int = 2, length: int = 32) -> torch.Tensor:
    """A known generator of time-series windows [K, L]: noisy sines of random frequency and phase."""
    t = torch.linspace(0, 1, length)
    frequency = 1 + 3 * torch.rand(n, features, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(n, features, 1, generator=generator)
    return torch.sin(2 * math.pi * frequency * t + phase) + 0.1 * torch.randn(n, features, length, generator=generator)


def test_windows_copies_and_fresh_draws():
    train = windows(400)
    reference = NearestTraining(train, windows(100))
    assert_copies(reference.score(jitter(train[:50], 0.01)))
    assert_like_held_out(reference.score(windows(100)))


# --- the measures themselves ---------------------------------------------------------------------


def test_nearest_two_in_blocks_matches_brute_force():
    queries, items = torch.randn(37, 5, generator=generator), torch.randn(101, 5, generator=generator)
    full = torch.cdist(queries, items)
    expected = full.topk(2, dim=1, largest=False)
    for chunk in (10, 200, 2**20):  # blocks of 2 items, of 40 items, and everything at once
        values, indices = nearest_two(queries, items, chunk_elements=chunk)
        torch.testing.assert_close(values, expected.values)
        assert torch.equal(indices, expected.indices)


def test_ratio_test_threshold_and_duplicates():
    nearest = torch.tensor([[1.0, 3.5], [1.0, 2.9], [0.0, 0.0], [2.0, 2.0]])
    assert ratio_copies(nearest).tolist() == [True, False, True, False]
    assert ratio_copies(nearest, threshold=0.5).tolist() == [True, True, True, False]


def test_distances_are_scale_free_and_summary_names_the_numbers(digits):
    train, held_out = digits
    samples = torch.cat([train[:10], held_out[:10]])
    a = memorisation(samples, train, held_out[10:])
    b = memorisation(3 * samples + 1, 3 * train + 1, 3 * held_out[10:] + 1)  # e.g. pixels vs model space
    assert a.copy_share == b.copy_share == 0.5
    assert a.nearest_ratio == pytest.approx(b.nearest_ratio)
    assert "copy share 50.0% of 20 samples" in a.summary() and "held-out" in a.summary()
    alone = memorisation(samples, train)
    assert alone.nearest_ratio is None and "no held-out data" in alone.summary()


def test_bad_input_says_what_is_wrong():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="unknown distance 'cosine'"):
        memorisation(x, x, distance="cosine")
    with pytest.raises(ValueError, match="at least 2 training items"):
        memorisation(x, x[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        memorisation(torch.zeros(3, 5), x)
    with pytest.raises(ValueError, match="chamfer needs point clouds"):
        memorisation(x, x, distance="chamfer")
    with pytest.raises(ValueError, match="threshold must be in"):
        memorisation(x, x, threshold=2.0)


def test_ten_thousand_training_items_in_small_blocks():
    items = torch.randn(10_000, 64, generator=generator)
    result = NearestTraining(items, chunk_elements=2**18).score(jitter(items[:1000:10], 0.01))
    assert result.copy_share == 1.0 and result.n_train == 10_000


# --- training: warning, report, early stopping ---------------------------------------------------


def tiny_folder(root, per_class: int = 10) -> None:
    """The issue's case in miniature: a small folder of 8x8 pictures in two classes."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")


def tiny_config(root, *overrides):
    base = [
        f"domain.root={root}",
        "domain.resolution=8",
        "domain.net.base_channels=8",
        "domain.net.channel_mults=[1,2]",
        "domain.net.attention_levels=[]",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=32",
        "checkpoint.every_n_steps=100",
        "preview.n=2",
        "final_samples.n=6",
        "sampler.steps=2",
        "ema.start_step=0",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def test_small_folder_warns_at_start_and_reports_copies_at_the_end(tmp_path, capsys):
    tiny_folder(tmp_path / "data")
    # 6 steps of batch 32 over the 18 training pictures: 10.7 passes
    with pytest.warns(UserWarning, match=r"training plans 11 passes over 18 training examples \(6 steps x batch 32\)"):
        train(tiny_config(tmp_path / "data", "memorisation.warn_passes=10"), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "samples" / "memorisation.json").read_text())
    assert report["n_samples"] == 6 and report["n_train"] == 18 and report["n_held_out"] == 2
    assert report["distance"] == "euclidean" and report["threshold"] == pytest.approx(1 / 3)
    assert 0 <= report["copy_share"] <= 1 and report["nearest_ratio"] > 0
    assert "memorisation of the final samples: copy share" in capsys.readouterr().out
    with (tmp_path / "run" / "previews" / "memorisation.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [2, 4, 6]  # every validation's preview, scored
    assert all(0 <= float(row["copy_share"]) <= 1 and int(row["n_samples"]) == 2 for row in rows)


def score_preview(tmp_path, domain, samples):
    """What PreviewCopies writes for a preview made of ``samples``."""
    datamodule = domain.datamodule(batch_size=8)
    trainer = SimpleNamespace(
        datamodule=datamodule,
        global_step=12,
        loggers=[],
        default_root_dir=str(tmp_path),
        sanity_checking=False,
        is_global_zero=True,
    )
    module = SimpleNamespace(domain=domain, config={}, preview_samples=samples(datamodule))
    PreviewCopies().on_validation_end(trainer, module)
    assert module.preview_samples is None  # each preview is scored once
    with (tmp_path / "previews" / "memorisation.csv").open() as file:
        (row,) = csv.DictReader(file)
    return row


def test_preview_of_training_examples_scores_as_copies(tmp_path):
    tiny_folder(tmp_path / "data")
    domain = ImageDomain(
        root=str(tmp_path / "data"), resolution=8, val_fraction=0.2, net={"_target_": "toolkit.nets.unet.UNet"}
    )
    copied = score_preview(tmp_path / "a", domain, lambda data: split_examples(data, "train")[:6])
    assert float(copied["copy_share"]) == 1.0 and float(copied["nearest_ratio"]) == 0.0
    unseen = score_preview(tmp_path / "b", domain, lambda data: split_examples(data, "val"))
    assert float(unseen["copy_share"]) == 0.0 and float(unseen["nearest_ratio"]) == pytest.approx(1.0)


def test_no_warning_below_the_threshold(tmp_path):
    tiny_folder(tmp_path / "data")
    config = tiny_config(tmp_path / "data", "memorisation.warn_passes=12", "trainer.max_steps=2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, tmp_path / "run")  # 2 x 32 / 18 = 3.6 passes
    assert not [w for w in caught if "passes over" in str(w.message)]
    assert (tmp_path / "run" / "samples" / "memorisation.json").is_file()


def test_early_stopping_stops_on_the_validation_loss(tmp_path):
    tiny_folder(tmp_path / "data")
    # min_delta so large that no validation improves on the first: stop at the second (step 4).
    config = tiny_config(
        tmp_path / "data", "trainer.max_steps=20", "early_stopping.patience=1", "early_stopping.min_delta=1e9"
    )
    last = train(config, tmp_path / "run")
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_training_callbacks_config_errors():
    off = {"memorisation": {"warn_passes": None, "previews": False}, "early_stopping": {"patience": None}}
    assert training_callbacks(off) == []
    assert [type(c) for c in training_callbacks({})] == [PreviewCopies]
    with pytest.raises(ValueError, match="early_stopping.patience must be a whole number"):
        training_callbacks({"early_stopping": {"patience": 0}})
    with pytest.raises(ValueError, match="early_stopping.min_delta must be >= 0"):
        training_callbacks({"early_stopping": {"patience": 2, "min_delta": -1}})
    with pytest.raises(ValueError, match="memorisation.warn_passes must be > 0"):
        PassesWarning(0)
    assert planned_passes(1500, 64, 180) == pytest.approx(533.3, abs=0.1)  # the run


def test_copy_report_of_a_module_that_returns_training_data(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = ["domain.net.base_channels=8", "domain.net.channel_mults=[1,2]", "domain.net.attention_levels=[]"]
        config = compose("config", overrides=overrides)
    config = OmegaConf.to_container(config, resolve=True)
    config.pop("hydra", None)
    module = DiffusionModule(config)
    datamodule = module.domain.datamodule(batch_size=64)
    copied = jitter(datamodule.train_set.tensors["x"][:40], 0.01)
    report = copy_report(module, datamodule, copied, tmp_path)
    assert report["copy_share"] == 1.0 and report["n_held_out"] == 180
    assert json.loads((tmp_path / "memorisation.json").read_text())["summary"] == report["summary"]
