"""Training, resuming, checkpoints, the sample CLI and config errors, on tiny image runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE, tiny_image_config
from hydra.errors import ConfigCompositionException
from PIL import Image

from toolkit import sample
from toolkit import train as train_cli
from toolkit.module import load_module
from toolkit.train import train

TINY = TINY_IMAGE
config = tiny_image_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, train(config(), run)


def test_training_writes_the_run_folder(trained):
    run, last = trained
    assert last.is_file() and (run / "checkpoints" / "step_000004.ckpt").is_file()
    assert not list(run.rglob("*.partial")), "no half-written checkpoint is left behind"
    assert (run / "config.yaml").is_file() and (run / "previews" / "step_000004.png").is_file()
    assert list(run.glob("logs/*/metrics.csv")) and list(run.glob("tensorboard/*/events.*"))
    assert (run / "samples" / "grid.png").is_file() and (run / "samples" / "strip.png").is_file()
    with np.load(run / "samples" / "samples.npz") as npz:
        assert npz["x"].shape == (4, 1, 16, 16) and npz["x"].dtype == np.float32
        assert npz["x"].min() >= 0 and npz["x"].max() <= 1
        assert list(npz["labels"]) == [0, 1, 2, 3]


def test_checkpoint_loads_with_weights_only(trained):
    _, last = trained
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["hyper_parameters"]["config"]["domain"]["_target_"] == "toolkit.domains.image.ImageDomain"
    # Lightning's EMA callback stores the averaged weights as the state_dict and keeps the raw ones.
    raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in averaged)


def test_foreach_ema_averages_as_lightnings_ema(trained, tmp_path, monkeypatch):
    """The one-call EMA update gives the averaged weights Lightning's per-tensor EMA gives, up to rounding."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    import toolkit.train as train_module

    monkeypatch.setattr(train_module, "ForeachEMA", EMAWeightAveraging)
    reference = torch.load(train(config(), tmp_path), weights_only=True)
    ours = torch.load(trained[1], weights_only=True)
    for name, averaged in reference["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][name], averaged, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(ours["state_dict"][k], ours["current_model_state"][k]) for k in ours["state_dict"])


def test_previews_every_n_validations(tmp_path):
    train(config("trainer.max_steps=6", "preview.every=2", "checkpoint.every_n_steps=100"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "previews").glob("*.png")) == ["step_000002.png", "step_000006.png"]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="preview.every must be a whole number"):
            train(config(f"preview.every={bad}"), tmp_path / "bad")


def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    _, last = trained
    resumed = train(config(f"ckpt_path={last}", "trainer.max_steps=6"), tmp_path)
    assert torch.load(resumed, weights_only=True)["global_step"] == 6


def test_cli_resume_takes_the_runs_own_config_and_folder(trained, tmp_path, monkeypatch):
    """README's form: only ckpt_path and the keys to change; no domain, no net sizes repeated."""
    run = shutil.copytree(trained[0], tmp_path / "runs" / "image" / "2026-01-01_00-00-00")
    monkeypatch.setattr(sys, "argv", ["train", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=6"])
    train_cli.main()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (run / "checkpoints" / "step_000006.ckpt").is_file(), "the run's own checkpoint.every_n_steps=2"
    assert [p.name for p in run.parent.iterdir()] == [run.name], "no new run folder"
    saved = load_module(run / "checkpoints" / "last.ckpt").config
    assert saved["trainer"]["max_steps"] == 6 and saved["domain"]["net"]["base_channels"] == 16
    assert (run / "logs" / "version_1").is_dir() and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step_000002.ckpt",
        "step_000004.ckpt",
        "step_000006.ckpt",
    ]


def test_sample_cli_is_deterministic(trained, tmp_path):
    _, last = trained
    common = [f"ckpt={last}", "n=5", "steps=3", "guidance=2.0"]
    sample.main([*common, "seed=934743", f"out={tmp_path / 'a'}"])
    sample.main([*common, "seed=934743", f"out={tmp_path / 'b'}"])
    sample.main([*common, "seed=1", f"out={tmp_path / 'c'}", "label=7"])
    a, b, c = (np.load(tmp_path / d / "samples.npz") for d in "abc")
    assert np.array_equal(a["x"], b["x"]) and list(a["seeds"]) == list(range(934743, 934748))
    assert not np.array_equal(a["x"], c["x"]) and set(c["labels"]) == {7}
    assert (Image.open(tmp_path / "a" / "sample_0000.png").tobytes()) == Image.open(
        tmp_path / "b" / "sample_0000.png"
    ).tobytes()


def test_sample_cli_edits(trained, tmp_path):
    _, last = trained
    picture = (np.arange(256).reshape(16, 16) % 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "in.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = [f"ckpt={last}", "n=2", "steps=3", f"image={tmp_path / 'in.png'}"]
    sample.main([*common, "edit=inpaint", f"mask={tmp_path / 'mask.png'}", f"out={tmp_path / 'inpaint'}"])
    x = np.load(tmp_path / "inpaint" / "samples.npz")["x"][:, 0]
    keep = mask == 0
    np.testing.assert_allclose(x[:, keep], np.broadcast_to(picture[keep] / 255.0, x[:, keep].shape), atol=1e-6)
    assert np.abs(x[:, ~keep] - picture[~keep] / 255.0).mean() > 0.05
    sample.main([*common, "edit=outpaint", "left=8", "bottom=8", f"out={tmp_path / 'outpaint'}"])
    x = np.load(tmp_path / "outpaint" / "samples.npz")["x"]
    assert x.shape == (2, 1, 24, 24)
    np.testing.assert_allclose(x[:, 0, :16, 8:], np.broadcast_to(picture / 255.0, (2, 16, 16)), atol=1e-6)
    sample.main([*common, "edit=img2img", "strength=0.3", f"out={tmp_path / 'img2img'}"])
    assert np.load(tmp_path / "img2img" / "samples.npz")["x"].shape == (2, 1, 16, 16)


def test_sample_cli_bad_input(trained, tmp_path):
    _, last = trained
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
    cases = {
        "unknown sampler": [f"ckpt={last}", f"out={tmp_path}", "sampler=dpm_fast"],
        "does not exist": [f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path}"],
        "unknown argument": [f"ckpt={last}", f"out={tmp_path}", "seeed=3"],
        "draw the mask at the image's size": [
            f"ckpt={last}",
            f"out={tmp_path}",
            "edit=inpaint",
            f"image={tmp_path / 'in.png'}",
            f"mask={tmp_path / 'small_mask.png'}",
        ],
        "required": [f"ckpt={last}"],
    }
    for message, argv in cases.items():
        with pytest.raises(SystemExit, match=message):
            sample.main(argv)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigCompositionException, match="max_stpes"):
        config("trainer.max_stpes=5")
    with pytest.raises(ConfigCompositionException, match="domain"):
        config("domain=imagez")
    with pytest.raises(ValueError, match="sampler.method='dpm_fast'"):
        train(config("sampler.method=dpm_fast"), tmp_path)
    with pytest.raises(ValueError, match="loss.target"):
        train(config("loss.target=noise"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(config(f"domain.root={tmp_path / 'no_such_folder'}"), tmp_path)


def test_ddp_with_two_processes(tmp_path):
    """Lightning's DDP on CPU (gloo) with two processes, through the real CLI; the checkpoint loads."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "toolkit.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    result = subprocess.run(
        [*command, *TINY, f"hydra.run.dir={tmp_path}"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(tmp_path.name)] == [tmp_path.name]
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["version_0"], "both ranks wrote into one run"
    assert "world_size: 2" in result.stderr + result.stdout or "distributed_backend=gloo" in result.stderr
    module = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert module.generate(2, seed=0, steps=2)["x"].shape == (2, 1, 16, 16)
