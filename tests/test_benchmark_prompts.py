"""benchmarks/prompts.py: the judges agree with the captions on real digits, spoken digits and point clouds, and
a run writes every row."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import load_benchmark, save_untrained_checkpoint

from toolkit.domains.audio import DEFAULT_ROOT, AudioDomain
from toolkit.domains.image import CAPTIONED_DIGITS_ROOT, ImageDomain
from toolkit.domains.pointcloud import PROCEDURAL_CLASSES, PointCloudDomain

TINY_TEXT_IMAGE = [
    "experiment=image_prompts",
    "domain.net.base_channels=8",
    "domain.net.channel_mults=[1,2]",
    "domain.net.attention_levels=[]",
    "domain.text_encoder.dim=16",
    "domain.text_encoder.layers=1",
    "domain.text_encoder.heads=2",
    "sampler.steps=2",
]


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


def test_real_digits_pass_the_judge_with_their_own_captions(bench):
    """The judge measures what the captions say: each real image, judged against its own caption,
    passes weight, slant and upright (they were captioned by the same measures, by thirds), and the
    classifier reads the digit."""
    judge = bench.DigitJudge(SimpleNamespace(domain=ImageDomain(source="captioned_digits")), epochs=3, seed=0)
    pixels, prompts = judge.real
    judged = judge.ceiling()
    assert all(judged["weight"]) and all(judged["slant"]) and all(judged["upright"])
    assert np.mean(judged["digit"]) > 0.9
    flip = {"bold": "thin", "thin": "bold", "": ""}
    flipped = [bench.Prompt(p.text, {**p.attributes, "weight": flip[p["weight"]]}) for p in prompts]
    assert not any(judge.judge_pixels(pixels, flipped)["weight"])


def test_prompt_sets_keep_held_out_combinations_and_paraphrases_apart(bench):
    sets = bench.prompt_sets(CAPTIONED_DIGITS_ROOT, bench.DigitJudge.attributes)
    combination = lambda p: tuple(p.attributes.values())  # noqa: E731
    training = {combination(p) for p in sets["training-style"]}
    assert training and not training & {combination(p) for p in sets["held-out combinations"]}
    assert {combination(p) for p in sets["paraphrases"]} <= training
    assert not {p.text for p in sets["paraphrases"]} & {p.text for p in sets["training-style"]}


def test_a_run_writes_every_row_and_the_floors(bench, tmp_path):
    ckpt = save_untrained_checkpoint(tmp_path / "prompts.ckpt", TINY_TEXT_IMAGE)
    labels = save_untrained_checkpoint(tmp_path / "labels.ckpt", [*TINY_TEXT_IMAGE[1:4], "sampler.steps=2"])
    out = bench.main(
        [
            "--ckpt",
            str(ckpt),
            "--label-ckpt",
            str(labels),
            "--per-prompt",
            "1",
            "--guidance",
            "1",
            "2",
            "--classifier-epochs",
            "1",
            "--out",
            str(tmp_path / "prompts.md"),
        ]
    )
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| prompts |") or line.startswith("| class labels |")]
    assert len(rows) == 2 * 4  # three prompt sets and the label model, at two guidance scales
    assert "| real data | their own captions | - | 300 | " in text
    assert text.count("- guidance ") == 2 and "on held-out combinations" in text


def test_without_guidance_given_a_run_adds_the_checkpoints_own_and_marks_it(bench, tmp_path):
    ckpt = save_untrained_checkpoint(tmp_path / "prompts.ckpt", [*TINY_TEXT_IMAGE, "sampler.guidance=3"])
    argv = ["--ckpt", str(ckpt), "--per-prompt", "1", "--classifier-epochs", "1", "--out", str(tmp_path / "p.md")]
    text = bench.main(argv).read_text()
    drawn = [line.split(" | ")[2] for line in text.splitlines() if line.startswith("| prompts |")]
    assert drawn == ["1"] * 3 + ["2"] * 3 + ["3"] * 3 + ["4"] * 3  # three prompt sets at each
    assert "- guidance 3 (the checkpoint's default): digit" in text and text.count("default)") == 1


def test_max_prompts_keeps_a_seeded_subset_in_order(bench):
    sets = {
        "big": [bench.Prompt(f"p{i:02d}", {}) for i in range(30)],
        "small": [bench.Prompt("q", {})],
    }
    picked = bench.subsample(sets, 10, seed=0)
    texts = [p.text for p in picked["big"]]
    assert len(texts) == 10 and texts == sorted(texts) and len(set(texts)) == 10
    assert texts != [p.text for p in sets["big"][:10]]  # spread over the set, not its head
    assert [p.text for p in bench.subsample(sets, 10, seed=0)["big"]] == texts
    assert picked["small"] == sets["small"] and bench.subsample(sets, None) is sets
    assert bench.set_sizes(picked, sets) == "big: 10 prompts of 30, small: 1 prompts"


def test_results_file_keeps_the_other_domains_sections(bench, tmp_path):
    path = tmp_path / "prompts.md"
    bench.write_section(path, "pointcloud", "python benchmarks/prompts.py --ckpt P", ["pointcloud rows"])
    bench.write_section(path, "image", "python benchmarks/prompts.py --ckpt I", ["image rows, first run"])
    bench.write_section(path, "image", "python benchmarks/prompts.py --ckpt I2", ["image rows, second run"])
    text = path.read_text()
    assert text.count("# Prompts: adherence per attribute") == 1
    assert "pointcloud rows" in text and "image rows, second run" in text and "first run" not in text
    assert text.index("## image") < text.index("## pointcloud")  # sections in DOMAIN_ORDER, not writing order
    assert "--ckpt I2`" in text and "--ckpt P`" in text


# ----------------------------------------------------------------------------------------------
# Audio: the spoken digits' judge


def silent_log_mels(domain, n: int = 1) -> torch.Tensor:
    return torch.full((n, *domain.sample_shape), -1.0)


def test_speech_duration_counts_the_frames_within_the_floor_of_the_loudest(bench):
    domain = AudioDomain(conditional=False)
    x = silent_log_mels(domain, 2)
    x[0, 0, 10:20, 5:25] = 1.0  # 20 loud frames (one model unit is 50 dB)
    x[0, 0, 10:20, 25:30] = 1.0 - 0.8  # 40 dB below: speech
    x[0, 0, 10:20, 30:40] = 1.0 - 1.0  # 50 dB below: not speech
    x[1, 0, :, 3:7] = 2.0  # out of range values are read clipped, as the domain decodes them
    hop_ms = 1000 * domain.hop_length / domain.sample_rate
    np.testing.assert_allclose(bench.speech_ms(x, domain, 45.0), [25 * hop_ms, 4 * hop_ms])
    np.testing.assert_allclose(bench.speech_ms(x, domain, 55.0)[0], 35 * hop_ms)


def test_voices_and_f0_come_from_the_captions_and_f0_falls_in_two_semitone_bins(bench):
    rows = {"a": {"clip_voice": "male", "f0_hz": "70.0"}, "b": {"clip_voice": "female", "f0_hz": "121.5"}}
    voice, f0 = bench.AudioJudge.voices_and_f0(rows, ["b", "a"])
    assert voice.tolist() == [1, 0] and f0.tolist() == [121.5, 70.0]
    with pytest.raises(ValueError, match="make_captions.py"):
        bench.AudioJudge.voices_and_f0({"a": {"clip_voice": "male"}}, ["a"])
    semitone = 2 ** (1 / 12)
    bins = bench.AudioJudge.f0_bin(np.array([30.0, 40.5, 40 * semitone**2.5, 399.0, 900.0]))
    assert bins.tolist() == [0, 0, 1, 19, 19]


def test_pitch_is_judged_against_the_median_f0_of_the_prompts_voice(bench, audio_judge, monkeypatch):
    """The same 120 Hz passes "high" for a man and "low" for a woman; a prompt without a voice uses the
    voice read."""
    x = torch.zeros(3, 1, 64, 64)
    monkeypatch.setattr(audio_judge, "read_f0", lambda x: np.full(len(x), 120.0))
    monkeypatch.setattr(audio_judge, "read_voice", lambda x: np.array([0, 1, 1]))
    assert audio_judge.median_f0["male"] < 120 < audio_judge.median_f0["female"]
    prompt = lambda voice, pitch: bench.Prompt("", {"word": "one", "voice": voice, "pitch": pitch, "speed": ""})  # noqa: E731
    assert audio_judge.judge(x, [prompt("male", "high"), prompt("female", "low"), prompt("", "high")])["pitch"] == [
        True,
        True,
        False,
    ]


def test_audio_prompt_sets_come_from_the_shipped_captions(bench):
    assert bench.JUDGES["audio"] is bench.AudioJudge and bench.AudioJudge.default_root == DEFAULT_ROOT
    sets = bench.prompt_sets(DEFAULT_ROOT, bench.AudioJudge.attributes)
    combination = lambda p: tuple(p.attributes.values())  # noqa: E731
    training = {combination(p) for p in sets["training-style"]}
    held = sets["held-out combinations"]
    held_out = {combination(p) for p in held}
    assert len(held_out) == 10 and not training & held_out
    assert all(p["voice"] in p.text or ("man" if p["voice"] == "male" else "woman") in p.text for p in held)
    assert ("seven", "", "high", "slow") in training  # a caption that names no voice judges none
    assert {combination(p) for p in sets["paraphrases"]} <= training
    assert not {p.text for p in sets["held-out combinations"]} & {p.text for p in sets["training-style"]}


@pytest.fixture(scope="module")
def audio_judge(bench):
    """The audio judge with one epoch per classifier: enough to test its wiring, not its accuracy."""
    return bench.AudioJudge(SimpleNamespace(domain=AudioDomain(conditional=False)), epochs=1, seed=0)


def test_real_clips_pass_the_speed_judge_with_their_own_captions(bench, audio_judge):
    x, prompts = audio_judge.real
    assert len(prompts) == 200 and x.shape == (200, 1, 64, 64)
    judged = audio_judge.ceiling()
    assert set(judged) == {"word", "voice", "pitch", "speed"}
    assert len(judged["word"]) == 200
    for attribute in ("voice", "pitch", "speed"):  # judged where the caption names it
        assert 0 < len(judged[attribute]) == sum(bool(p[attribute]) for p in prompts) < 200
    assert np.mean(judged["speed"]) > 0.97
    flip = {"fast": "slow", "slow": "fast", "": ""}
    flipped = [bench.Prompt(p.text, {**p.attributes, "speed": flip[p["speed"]]}) for p in prompts]
    assert np.mean(audio_judge.judge(x, flipped)["speed"]) < 0.03


def test_audio_classes_follow_the_label_models_class_folders(bench, audio_judge):
    label_domain = AudioDomain(conditional=True)
    assert audio_judge.class_names == label_domain.class_names
    seven = bench.Prompt("seven", {"word": "seven", "voice": "", "pitch": "", "speed": ""})
    assert audio_judge.class_of(seven) == label_domain.class_names.index("seven")
    x, prompts = audio_judge.real
    assert audio_judge.classes(x).shape == (len(prompts),)
    assert set(audio_judge.accuracy) == {"word", "voice", "F0 side", "F0 error (semitones)"}
    assert "held-out real clips" in audio_judge.description()


# ----------------------------------------------------------------------------------------------
# Point clouds: the captioned procedural shapes' judge


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
