"""benchmarks/prompts.py: the judge agrees with the captions on real digits, and a run writes every row."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import load_benchmark, save_untrained_checkpoint

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
