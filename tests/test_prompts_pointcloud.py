"""benchmarks/prompts.py's PointCloudJudge: its measures read what the captions say about real clouds, and a
prompt run on a point-cloud checkpoint writes every row."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import load_benchmark, save_untrained_checkpoint

from toolkit.domains.pointcloud import PROCEDURAL_CLASSES, PointCloudDomain

SHAPES_PER_CLASS = 40  # a small captioned set of its own, generated into a temporary cache
TINY_TEXT_POINTCLOUD = [
    "experiment=pointcloud_prompts",
    "domain.num_points=128",
    "domain.net.dim=16",
    "domain.net.depth=1",
    "domain.net.heads=2",
    "domain.net.num_latents=8",
    "domain.text_encoder.dim=16",
    "domain.text_encoder.layers=1",
    "domain.text_encoder.heads=2",
    "sampler.steps=2",
]


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("prompts")
    yield module
    del sys.modules[module.__name__]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("pointcloud-cache")


@pytest.fixture(scope="module")
def judge(bench, cache):
    domain = PointCloudDomain(
        source="procedural_captioned",
        num_points=512,
        shapes_per_class=SHAPES_PER_CLASS,
        cache_dir=str(cache),
        text_encoder={"kind": "learned"},
    )
    return bench.PointCloudJudge(SimpleNamespace(domain=domain), epochs=10, seed=0)


def box_surface(extents, count=4000, seed=0) -> np.ndarray:
    """Points on the surface of an axis-aligned box with the given (x, y, z) extents, centred at 0."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-0.5, 0.5, size=(count, 3))
    face = rng.integers(0, 3, size=count)
    points[np.arange(count), face] = np.sign(points[np.arange(count), face]) * 0.5
    return points * np.asarray(extents)


def test_proportions_of_a_box_are_its_side_ratios(bench):
    """Height over the larger horizontal side, span (z) over length (x); robust extents barely shrink them."""
    assert bench.height_ratio(box_surface([2.0, 3.0, 1.0])) == pytest.approx(1.5, rel=0.03)
    assert bench.height_ratio(box_surface([1.0, 0.5, 2.0])) == pytest.approx(0.25, rel=0.03)
    assert bench.width_ratio(box_surface([4.0, 0.5, 2.0]), "airplane") == pytest.approx(0.5, rel=0.03)
    with pytest.raises(ValueError, match="only lamps and airplanes"):
        bench.width_ratio(box_surface([1, 1, 1]), "chair")


def test_a_mug_without_its_handle_reads_as_no_handle(bench):
    """A cylinder (a mug's body) has no points beyond its radius; with a ring on one side it has a handle."""
    rng = np.random.default_rng(0)
    angle, height = rng.uniform(0, 2 * np.pi, 3000), rng.uniform(0, 1, 3000)
    body = np.stack([0.5 * np.cos(angle), height, 0.5 * np.sin(angle)], axis=1)
    ring = rng.uniform(0, 2 * np.pi, 300)
    handle = np.stack([0.5 + 0.2 * np.cos(ring), 0.5 + 0.2 * np.sin(ring), np.zeros(300)], axis=1)
    assert bench.shape_part(body, "mug") == "no handle"
    assert bench.shape_part(np.concatenate([body, handle]), "mug") == "handle"
    assert bench.shape_part(body, "lamp") == ""


def test_real_clouds_pass_the_judge_with_their_own_captions(bench, judge):
    """Every measurable attribute of the real clouds agrees with the caption it was made from (height and
    width by thirds, so the median splits them), the classifier reads the shapes, and flipped captions fail."""
    points, prompts = judge.real
    judged = judge.ceiling()
    assert len(judged["height"]) > 10 and len(judged["width"]) > 5 and len(judged["part"]) > 20
    assert all(judged["height"]) and all(judged["width"]) and all(judged["part"])
    assert np.mean(judged["shape"]) > 0.9
    flip = {"tall": "short", "short": "tall", "wide": "narrow", "narrow": "wide", "": ""}
    parts = {"armrests": "no armrests", "no armrests": "armrests", "round": "four legs", "four legs": "round"}
    flipped = [
        bench.Prompt(
            p.text,
            {**p.attributes, "height": flip[p["height"]], "width": flip[p["width"]], "part": parts.get(p["part"], "")},
        )
        for p in prompts
    ]
    against_flipped = judge.judge_points(points, flipped)
    assert against_flipped["height"] and not any(against_flipped["height"])
    assert against_flipped["width"] and not any(against_flipped["width"])
    assert against_flipped["part"] and not any(against_flipped["part"])


def test_class_indices_follow_the_label_model(judge):
    """``classes`` and ``class_of`` count in the order of the class-label model's classes."""
    assert list(judge.class_names) == PointCloudDomain().class_names == list(PROCEDURAL_CLASSES)
    points, prompts = judge.real
    assert [judge.class_of(p) for p in prompts] == [PROCEDURAL_CLASSES.index(p["shape"]) for p in prompts]
    read = judge.classes(torch.from_numpy(points).float())
    assert read.shape == (len(prompts),) and set(read.tolist()) <= set(range(len(PROCEDURAL_CLASSES)))


def test_a_point_cloud_run_writes_every_row(bench, cache, tmp_path):
    """End to end on an untrained tiny model: the prompt sets come from the domain's captioned folder."""
    data = [f"domain.shapes_per_class={SHAPES_PER_CLASS}", f"domain.cache_dir={cache}"]
    ckpt = save_untrained_checkpoint(tmp_path / "prompts.ckpt", [*TINY_TEXT_POINTCLOUD, *data])
    out = bench.main(
        ["--ckpt", str(ckpt), "--per-prompt", "1", "--guidance", "1", "--classifier-epochs", "1"]
        + ["--out", str(tmp_path / "prompts.md")]
    )
    text = out.read_text()
    assert len([line for line in text.splitlines() if line.startswith("| prompts |")]) == 3
    assert "| real data | their own captions | - |" in text and "- guidance 1: shape " in text
    assert "part" in text and "on held-out combinations" in text
