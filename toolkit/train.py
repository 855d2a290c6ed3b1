"""Training entry point: ``python -m toolkit.train [domain=image] [key=value ...]``.

Hydra composes conf/; one output folder per run holds the resolved config, checkpoints
(``last.ckpt`` included), CSV and TensorBoard logs, preview pictures and the final samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from toolkit.callbacks import copy_report, training_callbacks
from toolkit.module import DiffusionModule

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config that ``python -m toolkit.train OVERRIDES...`` would use, composed outside a
    Hydra run (for scripts, benchmarks and the imputation API)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


class AtomicModelCheckpoint(ModelCheckpoint):
    """Writes each checkpoint to a temporary file and renames it into place, so a checkpoint on
    disk is never half-written, even if the run dies while saving."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("AtomicModelCheckpoint")


def callbacks(config: dict, run_dir: Path) -> list[L.Callback]:
    found = [
        AtomicModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step_{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=config["checkpoint"]["every_n_steps"],
            save_top_k=-1,
            save_last=True,
        ),
    ]
    if config["trainer"].get("enable_progress_bar", True):
        found.append(TQDMProgressBar(refresh_rate=10))
    ema = config.get("ema") or {}
    if ema.get("decay") is not None:
        found.append(EMAWeightAveraging(decay=ema["decay"], update_starting_at_step=ema.get("start_step", 0)))
    return found + training_callbacks(config)


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Train one run into ``run_dir``; returns the path of ``last.ckpt``."""
    L.seed_everything(cfg.seed, workers=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    module = DiffusionModule(config)
    datamodule = module.domain.datamodule(config["data"]["batch_size"], config["data"]["num_workers"], cfg.seed)
    trainer = L.Trainer(
        **config["trainer"],
        default_root_dir=str(run_dir),
        callbacks=callbacks(config, run_dir),
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tensorboard")],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.is_global_zero:
        OmegaConf.save(module.config, run_dir / "config.yaml")
        final = config["final_samples"]
        out = module.generate(final["n"], seed=final["seed"], trajectory_every=2)
        module.domain.save(out["x"], run_dir / "samples", out["labels"], out["seeds"], out["trajectory"])
        copy_report(module, datamodule, out["x"], run_dir / "samples")
    return run_dir / "checkpoints" / "last.ckpt"


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    last = train(cfg, run_dir)
    print(f"run folder: {run_dir}\nlast checkpoint: {last}\nsamples: {run_dir / 'samples'}")


if __name__ == "__main__":
    main()
