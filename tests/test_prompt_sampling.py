"""Prompts end to end on a tiny image model: caption dropout, the empty prompt as the null branch,
guidance 1 = conditional sampling, same seed and prompt = same bits, negative prompts, training on
tokens, checkpoints without the frozen table, and the sample CLI's prompt keys."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_image_config
from omegaconf import OmegaConf

from toolkit import sample
from toolkit.core import sampler
from toolkit.module import DiffusionModule, load_module, read_checkpoint, save_module
from toolkit.text import PAD

TEXT = "{kind: learned, max_tokens: 64, dim: 32, layers: 1, heads: 2, dropout: 0.0}"


def prompt_module(*overrides, text=TEXT) -> DiffusionModule:
    """A tiny text-conditioned model of the shipped captioned digits ("a bold seven leaning right")."""
    config = tiny_image_config(
        "domain.source=captioned_digits",
        "domain.conditional=false",
        f"+domain.text_encoder={text}",
        *overrides,
    )
    torch.manual_seed(0)
    return DiffusionModule(OmegaConf.to_container(config, resolve=True))


def wake_text_layers(module: DiffusionModule) -> DiffusionModule:
    """Small random values in the zero-initialised layers that bring the prompt in, as training
    would leave them, so that prompts change the samples of an untrained module."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, parameter in module.net.named_parameters():
            if ".out." in key or "text_pooled" in key or "output_conv" in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module


@pytest.fixture(scope="module")
def module():
    return wake_text_layers(prompt_module())


def test_caption_dropout_replaces_dropped_prompts_by_padding(module):
    tokens = module.domain.tokenize(["a seven", "a bold eight", "a one", "a two"] * 2)
    kept = module.drop_cond({"tokens": tokens}, 0.0, None)["tokens"]
    assert torch.equal(kept, tokens)
    dropped = module.drop_cond({"tokens": tokens}, 0.999999, torch.Generator().manual_seed(0))["tokens"]
    assert (dropped == PAD).all()
    some = module.drop_cond({"tokens": tokens}, 0.5, torch.Generator().manual_seed(0))["tokens"]
    whole_rows = [(row == PAD).all() or torch.equal(row, original) for row, original in zip(some, tokens)]
    assert all(whole_rows) and 0 < int((some == PAD).all(1).sum()) < 8


def test_the_empty_prompt_is_the_null_branch(module):
    plain = module.generate(3, seed=4, steps=3, guidance=1.0)
    empty = module.generate(3, seed=4, steps=3, guidance=1.0, prompt="")
    assert plain["prompts"] is None and empty["prompts"] == ["", "", ""]
    assert torch.equal(plain["x"], empty["x"])
    null = module.domain.null_cond({"tokens": module.domain.tokenize(["a seven"])})["tokens"]
    assert torch.equal(null, module.domain.tokenize([""]))


def test_guidance_1_is_conditional_sampling(module):
    prompts = ["a seven", "a one", "a seven"]
    guided = module.generate(3, seed=2, steps=3, guidance=1.0, prompt=prompts)
    tokens = module.domain.tokenize(prompts)
    plain = sampler.sample(
        module.denoiser(), (3, 1, 16, 16), module.schedule, "unipc", 3, [2, 3, 4], cond={"tokens": tokens}
    )
    assert torch.equal(guided["x"], plain) and guided["prompts"] == prompts


def test_guidance_interval_limits_guidance_to_the_times_inside_it(module):
    prompts = ["a seven", "a one", "a seven"]
    draw = lambda **kw: module.generate(3, seed=2, steps=4, prompt=prompts, **kw)["x"]  # noqa: E731
    guided, conditional = draw(guidance=3.0), draw(guidance=1.0)
    assert torch.equal(draw(guidance=3.0, guidance_interval=(0.0, 1.0)), guided)
    assert torch.equal(draw(guidance=3.0, guidance_interval=(0.0, 1e-6)), conditional)  # no step inside
    part = draw(guidance=3.0, guidance_interval=(0.0, 0.5))
    assert not torch.allclose(part, guided) and not torch.allclose(part, conditional)
    module.config["sampler"]["guidance_interval"] = [0.0, 0.5]
    try:
        assert torch.equal(draw(guidance=3.0), part)  # the sampler config's interval is the default
    finally:
        module.config["sampler"]["guidance_interval"] = None
    with pytest.raises(ValueError, match="t_low < t_high"):
        draw(guidance=1.0, guidance_interval=(0.5, 0.2))


def test_same_seed_and_prompt_same_bits_and_prompts_matter(module):
    first = module.generate(4, seed=1, steps=3, guidance=3.0, prompt="a seven", trajectory_every=1)
    again = module.generate(4, seed=1, steps=3, guidance=3.0, prompt="a seven", trajectory_every=1)
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["trajectory"], again["trajectory"])
    assert first["prompts"] == ["a seven"] * 4
    other = module.generate(4, seed=1, steps=3, guidance=3.0, prompt="a one")
    assert not torch.allclose(first["x"], other["x"])
    negative = module.generate(4, seed=1, steps=3, guidance=3.0, prompt="a seven", negative_prompt="a one")
    assert not torch.allclose(first["x"], negative["x"])
    in_batches = module.generate(
        4, seed=1, steps=3, guidance=3.0, prompt="a seven", negative_prompt="a one", batch_size=3
    )
    assert torch.allclose(in_batches["x"], negative["x"], atol=1e-5)


def test_prompt_errors_are_clear(module):
    with pytest.raises(ValueError, match="one per sample: 3 samples but 2 prompts"):
        module.generate(3, steps=1, prompt=["a one", "a two"])
    with pytest.raises(ValueError, match="max_tokens=64"):
        module.generate(1, steps=1, prompt="a seven leaning right with a very bold stroke, drawn by a careful hand")
    with pytest.raises(ValueError, match="only acts through guidance"):
        module.generate(2, steps=1, guidance=1.0, prompt="a one", negative_prompt="a two")
    plain = DiffusionModule(OmegaConf.to_container(tiny_image_config(), resolve=True))
    for keyword in ("prompt", "negative_prompt"):
        with pytest.raises(ValueError, match="not trained with captions"):
            plain.generate(2, steps=1, **{keyword: "a seven"})


def test_label_guidance_is_unchanged_by_prompt_support():
    torch.manual_seed(0)
    module = DiffusionModule(OmegaConf.to_container(tiny_image_config(), resolve=True))
    labels = torch.tensor([3, 7])
    guided = module.generate(2, seed=0, steps=2, guidance=2.0, labels=labels)
    uncond = module.domain.null_cond({"label": labels})
    direct = sampler.sample(
        module.denoiser(),
        (2, 1, 16, 16),
        module.schedule,
        "unipc",
        2,
        [0, 1],
        cond={"label": labels},
        guidance=2.0,
        uncond=uncond,
    )
    assert torch.equal(guided["x"], direct) and guided["prompts"] is None


def test_previews_cycle_through_the_configured_prompts(tmp_path):
    module = wake_text_layers(prompt_module("preview.n=3", "+preview.prompts=[a seven, a one]"))
    module._trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path), global_step=0, loggers=[]
    )
    module.on_validation_epoch_end()
    expected = module.generate(3, seed=0, prompt=["a seven", "a one", "a seven"])["x"]
    assert torch.equal(module.preview_samples, expected)
    assert (tmp_path / "previews" / "step_000000.png").is_file()


def test_a_few_training_steps_on_tokens_reduce_the_loss():
    module = prompt_module()
    batch = {k: v[:32] for k, v in module.domain.datamodule(batch_size=32).train_set.tensors.items()}
    encoder_before = {k: v.clone() for k, v in module.net.text_encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(module.net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)

    def loss() -> torch.Tensor:
        return module._loss(batch, generator.manual_seed(0), drop_cond=False)

    assert "tokens" in module.domain.training_batch(batch).cond
    start = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.8 * start
    changed = [k for k, v in module.net.text_encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert changed  # the prompt's gradient reaches the text encoder


def test_checkpoint_round_trip_without_the_frozen_table(tmp_path):
    module = wake_text_layers(prompt_module(text="{kind: wordllama, max_tokens: 8, dim: 32, layers: 1, heads: 2}"))
    path = save_module(module, tmp_path / "prompts.ckpt")
    state = read_checkpoint(path)["state_dict"]
    assert not any(key.endswith("table") for key in state) and any("text_encoder" in key for key in state)
    assert path.stat().st_size < 4_000_000  # the 16 MB table is reloaded from the wheel, not stored
    loaded = load_module(path)
    assert torch.equal(loaded.net.text_encoder.table, module.net.text_encoder.table)
    kwargs = {"seed": 0, "steps": 2, "guidance": 2.0, "prompt": "a bold seven"}
    assert torch.equal(loaded.generate(2, **kwargs)["x"], module.generate(2, **kwargs)["x"])


# --- the sample CLI ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(module, tmp_path_factory):
    return save_module(module, tmp_path_factory.mktemp("ckpt") / "prompts.ckpt")


def test_sample_cli_writes_which_prompt_made_which_file(checkpoint, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a seven\n\n  a one  \n")
    out = tmp_path / "out"
    sample.main(
        [
            f"ckpt={checkpoint}",
            f"out={out}",
            f"prompts={prompts_file}",
            "n=2",
            "steps=2",
            "seed=5",
            "trajectory_every=1",
            "guidance=2",
            "negative_prompt=a two",
        ]
    )
    arrays = np.load(out / "samples.npz")
    assert arrays["prompts"].tolist() == ["a seven", "a seven", "a one", "a one"]
    assert arrays["seeds"].tolist() == [5, 6, 7, 8] and arrays["x"].shape[0] == 4
    with open(out / "prompts.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seed"], r["prompt"]) for r in rows] == [
        ("5", "a seven"),
        ("6", "a seven"),
        ("7", "a one"),
        ("8", "a one"),
    ]
    assert all((out / f"{r['file']}.png").is_file() for r in rows)
    assert (out / "strip.png").is_file() and (out / "grid.png").is_file()
    module = load_module(checkpoint)
    direct = module.generate(2, seed=5, steps=2, guidance=2.0, prompt="a seven", negative_prompt="a two")
    assert np.allclose(arrays["x"][:2], module.domain.decode(direct["x"]), atol=1e-6)


def test_sample_cli_one_prompt(checkpoint, tmp_path):
    out = tmp_path / "out"
    sample.main([f"ckpt={checkpoint}", f"out={out}", "prompt=a seven", "n=3", "steps=2", "trajectory_every=0"])
    assert np.load(out / "samples.npz")["prompts"].tolist() == ["a seven"] * 3
    assert not (out / "strip.png").exists()


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        sample.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_sample_cli_prompt_errors(checkpoint, tmp_path, capsys):
    base = [f"ckpt={checkpoint}", f"out={tmp_path / 'out'}", "n=1", "steps=1"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "holds no prompt" in error_of(capsys, [*base, f"prompts={empty}"])
    assert "is not a file" in error_of(capsys, [*base, f"prompts={tmp_path / 'missing.txt'}"])
    assert "not both" in error_of(capsys, [*base, "prompt=a one", f"prompts={empty}"])
    assert 'takes prompts instead (prompt="...")' in error_of(capsys, [*base, "label=3"])
    assert "not two numbers LOW,HIGH" in error_of(capsys, [*base, "prompt=a one", "guidance_interval=0.5"])
    assert "t_low < t_high" in error_of(capsys, [*base, "prompt=a one", "guidance=2", "guidance_interval=0.5,0.2"])
    plain = save_module(DiffusionModule(OmegaConf.to_container(tiny_image_config(), resolve=True)), tmp_path / "p.ckpt")
    assert "not trained with captions" in error_of(capsys, [f"ckpt={plain}", *base[1:], "prompt=a one"])
    assert not (tmp_path / "out").exists()


def test_lightning_training_with_ema_writes_checkpoints_that_load_and_resume(tmp_path):
    from toolkit.train import train

    text = "{kind: wordllama, max_tokens: 32, dim: 32, layers: 1, heads: 2}"
    overrides = [
        "domain.source=captioned_digits",
        "domain.conditional=true",  # labels and captions together
        f"+domain.text_encoder={text}",
        "+preview.prompts=[a seven, a one]",
    ]
    last = train(tiny_image_config(*overrides), tmp_path / "run")
    checkpoint = torch.load(last, weights_only=True)
    for state in (checkpoint["state_dict"], checkpoint["current_model_state"]):
        assert not any(key.endswith("table") for key in state) and any("cross_attention" in key for key in state)
    module = load_module(last)
    first = module.generate(2, seed=0, steps=2, guidance=2.0, prompt="a seven")
    assert torch.equal(first["x"], module.generate(2, seed=0, steps=2, guidance=2.0, prompt="a seven")["x"])
    resumed = train(tiny_image_config(*overrides, f"ckpt_path={last}", "trainer.max_steps=6"), tmp_path / "resumed")
    assert torch.load(resumed, weights_only=True)["global_step"] == 6
