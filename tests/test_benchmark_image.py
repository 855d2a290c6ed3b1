"""The pieces of benchmarks/image_quality.py and benchmarks/common.py on tiny data: the Frechet
distance against closed forms, NFE budgets, the digit classifier, the report, and one end-to-end
run on an untrained checkpoint so that the script cannot rot."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark, save_untrained_checkpoint
from scipy import linalg

from toolkit.core import schedule
from toolkit.domains.image import ImageDomain

ROOT = Path(__file__).resolve().parents[1]


common = load_benchmark("common")
bench = load_benchmark("image_quality")


def random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    factor = rng.normal(size=(d, d))
    return factor @ factor.T / d + 0.1 * np.eye(d)


# --- Frechet distance -------------------------------------------------------------------------


def test_frechet_distance_of_identical_sets_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 16)) * np.linspace(0.1, 5, 16)
    assert common.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    # Rank-deficient covariances (fewer rows than dimensions) stay finite and zero too.
    few = features[:10]
    assert common.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = common.frechet_distance_from_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)


def test_frechet_distance_closed_form_for_general_gaussians():
    """Non-commuting covariances against the textbook formula with scipy's sqrtm, and symmetry."""
    rng = np.random.default_rng(1)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    cov_a, cov_b = random_covariance(rng, 5), random_covariance(rng, 5)
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real
    assert common.frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)
    assert common.frechet_distance_from_moments(mean_b, cov_b, mean_a, cov_a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    mean_a, mean_b = np.zeros(3), np.array([1.0, -1.0, 0.0])
    cov_a, cov_b = random_covariance(rng, 3), random_covariance(rng, 3)
    expected = common.frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b)
    a = rng.multivariate_normal(mean_a, cov_a, size=100_000)
    b = rng.multivariate_normal(mean_b, cov_b, size=100_000)
    assert common.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="dimension"):
        common.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"n >= 2"):
        common.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="mismatched moments"):
        common.frechet_distance_from_moments(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))


def test_matched_frechet_distance_carries_the_small_sample_bias():
    """Same distribution: subsets of 30 rows sit further from the reference than all 3,000 rows,
    by about the estimator's bias; with no more rows than the size, it is the plain distance."""
    rng = np.random.default_rng(3)
    reference, features = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    full = common.frechet_distance(features, reference)
    matched = common.matched_frechet_distance(features, reference, size=30, repeats=20)
    assert full < 0.02 < matched
    few = features[:30]
    assert common.matched_frechet_distance(few, reference, size=30) == common.frechet_distance(few, reference)


# --- budgets, timing, the results file --------------------------------------------------------


def test_steps_for_nfe_matches_evaluations():
    sched = schedule.get("cosine")
    assert common.steps_for_nfe("ddim", 20, sched) == 20
    assert common.steps_for_nfe("ddpm", 10, sched) == 10
    # Heun: two evaluations per step but the last, 2 * steps - 1.
    assert common.steps_for_nfe("heun", 20, sched) == 10
    assert common.count_evaluations("heun", 10, sched) == 19
    assert common.count_evaluations("heun", 25, sched) == 49
    with pytest.raises(ValueError, match="evaluations"):
        common.steps_for_nfe("ddim", 0, sched)


def test_stopwatch_and_results_file(tmp_path):
    with common.stopwatch() as watch:
        sum(range(10_000))
    assert 0 < watch.seconds < 5
    path = common.write_results(tmp_path / "sub" / "r.md", "Title", "python x.py --a 1", ["| a |", "| --- |"])
    text = path.read_text()
    assert text.startswith("# Title\n")
    assert f"{__import__('os').cpu_count()} CPUs" in text and f"torch {torch.__version__}" in text
    assert "Date: 20" in text and "`python x.py --a 1`" in text and text.endswith("| --- |\n")
    assert common.markdown_table(["x", "y"], [[1, 2.5]]) == ["| x | y |", "| --- | ---: |", "| 1 | 2.5 |"]
    with pytest.raises(ValueError, match="2 cells"):
        common.markdown_table(["x", "y"], [[1]])


def test_reproduce_command_names_the_default_run_folder():
    command = bench.reproduce_command(["--ckpt", "/tmp/x/last.ckpt", "--guidance", "3"])
    assert command == ("python benchmarks/image_quality.py --ckpt runs/image/<run>/checkpoints/last.ckpt --guidance 3")


# --- the classifier ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    domain = ImageDomain(net={"_target_": "toolkit.nets.unet.UNet"})
    torch.set_num_threads(1)
    reference = bench.build_reference(domain, epochs=4, seed=0)
    return domain, reference


def test_classifier_learns_the_digits_quickly(digits):
    domain, reference = digits
    train, held_out = bench.labelled_splits(domain)
    assert len(train.labels) + len(held_out.labels) == 1797 and len(held_out.labels) == 180
    assert train.pixels.shape[1:] == (1, 16, 16) and train.pixels.min() >= 0 and train.pixels.max() <= 1
    assert reference.classifier_accuracy > 0.9
    assert reference.train_features.shape == (len(train.labels), 64)


def test_score_of_the_held_out_split_is_the_floor(digits):
    """Scoring real held-out digits as if they were samples gives the classifier's accuracy and
    exactly the floor; the same digits under wrong labels score near 0% accuracy, same FD."""
    domain, reference = digits
    _, held_out = bench.labelled_splits(domain)
    accuracy, worst, fd, fd_all = bench.score(reference, held_out.pixels, held_out.labels, 10)
    assert accuracy == pytest.approx(reference.classifier_accuracy)
    assert worst <= accuracy and fd == pytest.approx(reference.floor) and fd_all == pytest.approx(fd)
    wrong = (held_out.labels + 1) % 10
    accuracy, *_ = bench.score(reference, held_out.pixels, wrong, 10)
    assert accuracy < 0.1
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    _, _, fd_noise, _ = bench.score(reference, noise, torch.arange(200) % 10, 10)
    assert fd_noise > 5 * reference.floor


def test_copies_of_training_digits_and_real_unseen_ones(digits):
    """Training digits handed back are all copies, in pixels and in features; held-out digits are the
    reference itself (ratio 1) and no copies."""
    domain, reference = digits
    train, held_out = bench.labelled_splits(domain)
    copied = common.copies(reference, train.pixels[:50])
    assert copied.inputs.copy_share == copied.features.copy_share == 1.0
    assert copied.inputs.nearest_ratio == 0.0 and common.copy_cells(copied) == ["100.0 / 100.0", "0.00 / 0.00"]
    unseen = common.copies(reference, held_out.pixels)
    assert unseen.inputs.copy_share == 0.0 and unseen.inputs.nearest_ratio == pytest.approx(1.0)
    assert unseen.features.nearest_ratio == pytest.approx(1.0)
    assert "The held-out split itself scores 0.0 / " in common.copy_note("pixels", reference)


def test_classifier_training_is_seeded():
    domain = ImageDomain(net={"_target_": "toolkit.nets.unet.UNet"})
    train, _ = bench.labelled_splits(domain)
    subset = bench.Split(train.pixels[:128], train.labels[:128])
    first, second = (bench.train_classifier(subset, 10, epochs=1, seed=5) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


# --- end to end on an untrained checkpoint ----------------------------------------------------


def untrained_checkpoint(path: Path) -> Path:
    overrides = [
        "domain.net.base_channels=8",
        "domain.net.channel_mults=[1,2]",
        "domain.net.attention_levels=[]",
        "trainer.max_steps=3",
        "ema.start_step=0",
    ]
    return save_untrained_checkpoint(path, overrides)


def test_benchmark_end_to_end(tmp_path, capsys):
    ckpt = untrained_checkpoint(tmp_path / "untrained.ckpt")
    out = tmp_path / "image.md"
    argv = ["--ckpt", str(ckpt), "--n-per-class", "1", "--samplers", "ddim", "heun", "--nfe", "3"]
    argv += ["--sweep-guidance", "1", "--classifier-epochs", "1", "--batch-size", "6", "--out", str(out)]
    assert bench.main(argv) == out
    text = out.read_text()
    assert "Reproduce: `python benchmarks/image_quality.py --ckpt runs/image/<run>/checkpoints/last.ckpt" in text
    assert "trained 0 steps (trainer.max_steps 3)" in text and "Floor: FD(held-out split, training split)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| ddim", "| heun", "| dpmpp_2m"))]
    # Heun at a budget of 3 evaluations runs 2 steps: 3 counted network calls per sample.
    assert [row.split(" | ")[:4] for row in rows] == [
        ["| ddim", "2", "3", "3"],
        ["| heun", "2", "3", "2"],
        ["| dpmpp_2m", "1", "20", "20"],
    ]
    assert "20 NFE: misses" in text and "| ddim" in capsys.readouterr().out
    assert "- Rows short of the targets at any NFE: ddim at 3 NFE (" in text
    assert text.count("dpmpp_2m, guidance 1, 20 NFE: misses") == 1
    assert all(math.isfinite(float(row.split(" | ")[6])) for row in rows)
    assert "| copies % (in / feat) | NN ratio (in / feat) |" in text and "- Memorisation" in text


def test_measured_rows_draw_each_setting_once_and_a_sweep_reuses_the_grid():
    calls = []
    rows = common.MeasuredRows(lambda method, budget, guidance: calls.append((method, budget, guidance)) or len(calls))
    grid = [rows(method, 10, 2.0) for method in ("unipc", "ddim")]
    swept = rows.sweep("unipc", 10, [1.0, 2.0, 3.0])
    assert grid == [1, 2] and swept == [3, 1, 4]
    assert calls == [("unipc", 10, 2.0), ("ddim", 10, 2.0), ("unipc", 10, 1.0), ("unipc", 10, 3.0)]
