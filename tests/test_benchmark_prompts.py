"""benchmarks/prompts.py: the judges agree with the captions on real digits and spoken digits, and a run writes
every row."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import load_benchmark, save_untrained_checkpoint

from toolkit.domains.audio import DEFAULT_ROOT, AudioDomain
from toolkit.domains.image import CAPTIONED_DIGITS_ROOT, ImageDomain

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


def test_voice_pitch_classes_split_each_voice_at_its_median_f0(bench):
    rows = {
        name: {"clip_voice": voice, "f0_hz": str(f0)}
        for name, voice, f0 in [
            ("a", "male", 70.0),
            ("b", "male", 90.0),
            ("c", "male", 120.0),
            ("d", "female", 110.0),  # lower than a male clip, but low for a female voice
            ("e", "female", 190.0),
            ("f", "female", 250.0),
        ]
    }
    assert bench.AudioJudge.voice_pitch_classes(rows, list(rows)) == [0, 0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="make_captions.py"):
        bench.AudioJudge.voice_pitch_classes({"a": {"clip_voice": "male"}}, ["a"])


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
    assert set(audio_judge.accuracy) == {"word", "voice", "F0 side"}
    assert "held-out real clips" in audio_judge.description()
