"""Test-wide settings: one intra-op thread. The tensors in tests are small, so threads buy
nothing, and on a busy 2-core machine oversubscribed threads slow every test several-fold."""

import torch

torch.set_num_threads(1)


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (registered in ``sys.modules``, where
    dataclasses look their module up while the file executes)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def save_untrained_checkpoint(path, overrides):
    """A Lightning-format checkpoint of an untrained module built from the composed config with
    ``overrides``: what benchmark end-to-end tests need without training."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from toolkit.module import DiffusionModule
    from toolkit.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    config.pop("hydra", None)
    module = DiffusionModule(config)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"config": module.config}}
    torch.save({**checkpoint, "global_step": 0, "pytorch-lightning_version": L.__version__}, path)
    return path


# The time-series net at its smallest: what every tiny time-series run in the tests uses, as config
# keys and as Hydra overrides.
TINY_TS_SIZES = {
    "domain.net.channels": 16,
    "domain.net.layers": 1,
    "domain.net.heads": 2,
    "domain.net.time_emb_dim": 16,
    "domain.net.feature_emb_dim": 4,
}
TINY_TS_NET = [f"{key}={value}" for key, value in TINY_TS_SIZES.items()]
# The imputer tests' model: the tiny net with a narrow feed-forward layer, 3 sampler steps, 16-step windows.
IMPUTER_WINDOW = 16
TINY_IMPUTER = {**TINY_TS_SIZES, "domain.net.ff_dim": 32, "sampler.steps": 3}

TINY_IMAGE = [
    "domain.net.base_channels=16",
    "domain.net.channel_mults=[1,2]",
    "domain.net.attention_levels=[]",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=16",
    "checkpoint.every_n_steps=2",
    "preview.n=4",
    "final_samples.n=4",
    "sampler.steps=3",
    "ema.start_step=0",
]


def tiny_image_config(*overrides):
    """The composed config of a tiny image run (a few seconds of training) with ``overrides``."""
    from toolkit.train import compose_config

    return compose_config([*TINY_IMAGE, *overrides])
