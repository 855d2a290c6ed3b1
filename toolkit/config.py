"""Run configs: Hydra's composition of ``conf/`` outside a Hydra run, for the training CLI,
scripts, benchmarks and the imputation API alike."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from toolkit.resources import resource_dir

CONF_DIR = str(resource_dir("conf"))


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config that ``python -m toolkit.train OVERRIDES...`` would use."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))
