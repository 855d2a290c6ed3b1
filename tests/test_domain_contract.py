"""The contract every domain keeps (shared/DESIGN.md), checked for each conf/domain/*.yaml: it builds
from its config, trains a step, generates, saves the common outputs, survives a checkpoint round
trip, and gives the same bits for the same seed whatever batch a sample is drawn in.

A new domain gets this test by adding its config file; give it tiny settings in ``TINY`` (or a
``tiny_<name>`` fixture) to keep the test fast."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_TS_NET
from omegaconf import OmegaConf

from toolkit.domains.base import GRID_FILE, SAMPLES_FILE, STRIP_FILE, Domain
from toolkit.module import DiffusionModule, load_module
from toolkit.train import CONF_DIR, compose_config

DOMAINS = sorted(path.stem for path in Path(CONF_DIR, "domain").glob("*.yaml"))
COMMON = ["sampler.steps=2", "sampler.method=ddim"]
TINY = {
    "image": ["domain.net.base_channels=8", "domain.net.channel_mults=[1,2]", "domain.net.attention_levels=[]"],
    "audio": [
        "domain.sample_rate=8000",
        "domain.clip_seconds=0.25",
        "domain.n_fft=256",
        "domain.hop_length=64",
        "domain.n_mels=16",
        "domain.griffin_lim_iters=2",
        "domain.nnls_iters=2",
        "domain.val_fraction=0.34",
        "domain.net.base_channels=8",
        "domain.net.channel_mults=[1,2]",
        "domain.net.groups=4",
    ],
    "pointcloud": [
        "domain.num_points=32",
        "domain.shapes_per_class=2",
        "domain.net.dim=16",
        "domain.net.depth=1",
        "domain.net.heads=2",
        "domain.net.num_latents=8",
    ],
    "timeseries": [
        "domain.source=synthetic",
        "domain.synthetic.num_series=2",
        "domain.synthetic.length=120",
        "domain.synthetic.num_features=2",
        "domain.window=16",
        *TINY_TS_NET,
    ],
}
# What a domain must implement itself; `save` may replace the hooks it calls.
REQUIRED = ("datamodule", "build_net", "decode")
SAVE_HOOKS = ("pictures", "write_sample")


def missing_parts(domain_class: type[Domain]) -> list[str]:
    """The parts of the contract ``domain_class`` leaves to the base class, which cannot do them."""
    own = [name for name in REQUIRED if getattr(domain_class, name) is getattr(Domain, name)]
    if domain_class.save is Domain.save:
        own += [name for name in SAVE_HOOKS if getattr(domain_class, name) is getattr(Domain, name)]
    return own


def tiny_audio_folder(root: Path) -> Path:
    """Two classes of three short tones each."""
    for name, frequencies in {"high": [2000.0, 2500.0, 3000.0], "low": [200.0, 300.0, 400.0]}.items():
        (root / name).mkdir(parents=True)
        for frequency in frequencies:
            time = np.arange(2000) / 8000
            sf.write(root / name / f"{int(frequency)}.wav", 0.5 * np.sin(2 * np.pi * frequency * time), 8000)
    return root


def tiny_config(name: str, tmp_path: Path) -> dict:
    overrides = [f"domain={name}", *COMMON, *TINY.get(name, [])]
    if name == "audio":
        overrides.append(f"domain.root={tiny_audio_folder(tmp_path / 'audio')}")
    if name == "pointcloud":
        overrides.append(f"domain.cache_dir={tmp_path / 'shapes'}")
    config = OmegaConf.to_container(compose_config(overrides), resolve=True)
    config.pop("hydra", None)
    return config


def test_missing_parts_are_named():
    class Bare(Domain):
        def decode(self, x):
            return x.numpy()

    assert missing_parts(Bare) == ["datamodule", "build_net", "pictures", "write_sample"]


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_keeps_the_contract(name: str, tmp_path: Path):
    config = tiny_config(name, tmp_path)
    torch.manual_seed(0)
    module = DiffusionModule(config)
    domain = module.domain
    assert not missing_parts(type(domain)), f"the {name} domain does not implement {missing_parts(type(domain))}"

    datamodule = domain.datamodule(batch_size=4, seed=0)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["x"].dtype == torch.float32 and tuple(batch["x"].shape[1:]) == tuple(domain.sample_shape), (
        f"the {name} domain's batches must hold `x` [B, *sample_shape]; got {tuple(batch['x'].shape)}"
    )
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters(), strict=True)), "no step taken"

    labels = torch.arange(4) % domain.num_classes if domain.num_classes else None
    out = module.generate(4, seed=0, labels=labels, trajectory_every=1)
    assert out["x"].shape == (4, *domain.sample_shape) and torch.isfinite(out["x"]).all()
    again = module.generate(4, seed=0, labels=labels)
    assert torch.equal(again["x"], out["x"]), "same seed, different samples"
    other_mates = module.generate(4, seed=[0, 11, 2, 13], labels=labels)
    assert torch.equal(other_mates["x"][[0, 2]], out["x"][[0, 2]]), "a sample changed with its batch mates"

    paths = domain.save(out["x"], tmp_path / "samples", out["labels"], out["seeds"], out["trajectory"])
    names = {Path(p).name for p in paths}
    assert {GRID_FILE, STRIP_FILE, SAMPLES_FILE} <= names, (
        f"{name} save misses { ({GRID_FILE, STRIP_FILE, SAMPLES_FILE} - names) }"
    )
    assert all(Path(p).is_file() for p in paths) and len(names) > 3, "no per-sample files"
    with np.load(tmp_path / "samples" / SAMPLES_FILE) as saved:
        assert saved["seeds"].tolist() == out["seeds"]
    assert domain.preview(out["x"], tmp_path / "preview.png", out["labels"]).is_file()

    checkpoint = tmp_path / "round_trip.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_module(checkpoint)
    assert torch.equal(loaded.generate(4, seed=0, labels=labels)["x"], out["x"]), (
        "checkpoint round trip changed samples"
    )
