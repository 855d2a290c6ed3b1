"""Training-time guards against memorisation (see toolkit/metrics/memorisation.py).

- ``PassesWarning``: at fit start, the planned passes over the training set
  (``max_steps * batch_size * processes / n_train``); many passes on little data is how a diffusion
  model learns to hand its training examples back, so the run warns with the numbers and what to do.
- Early stopping on the validation loss (Lightning's ``EarlyStopping``), off by default.
- ``PreviewCopies``: the copy share of every training preview's samples, printed, logged as
  ``preview/copy_share`` and appended to ``previews/memorisation.csv``, so a run shows when its
  samples start to turn into copies.
- ``copy_report``: the copy share of the final samples against the training set, with held-out data
  as the reference, printed and written as ``memorisation.json``.

Config keys (conf/config.yaml): ``memorisation.warn_passes`` (null: no warning),
``memorisation.threshold`` (the ratio test's), ``memorisation.previews`` (false: previews are not
scored), ``early_stopping.patience`` (validation checks without improvement before stopping; null:
off) and ``early_stopping.min_delta``.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from toolkit.metrics.memorisation import RATIO_THRESHOLD, NearestTraining

log = logging.getLogger(__name__)

# The space each domain's samples are compared in: model space, an affine map of the domain's own
# (pixels, log-mel dB, per-variable standardised windows), so distance ratios are the same there.
DISTANCE_BY_DOMAIN = {"pointcloud": "chamfer"}


def split_dataset(datamodule: L.LightningDataModule, split: str) -> Dataset:
    """The ``train`` or ``val`` dataset of one of the domains' data modules (set up if needed)."""
    names = {"train": ("train_set", "train"), "val": ("val_set", "val")}[split]
    for _ in range(2):
        for name in names:
            dataset = getattr(datamodule, name, None)
            if isinstance(dataset, Dataset):
                return dataset
        datamodule.setup("fit")
    raise ValueError(f"{type(datamodule).__name__} has no {split} dataset ({' or '.join(names)})")


def split_examples(datamodule: L.LightningDataModule, split: str) -> Tensor:
    """All model-space examples ``x`` of a split, in order, as one tensor [n, ...]."""
    dataset = split_dataset(datamodule, split)
    if len(dataset) == 0:
        return torch.empty(0)
    return torch.cat([batch["x"] for batch in DataLoader(dataset, batch_size=1024, shuffle=False)])


def planned_passes(max_steps: int, batch_size: int, n_train: int, processes: int = 1) -> float:
    """How many times training will see each training example on average."""
    if n_train < 1:
        raise ValueError("the training set is empty; give the domain some data")
    return max_steps * batch_size * processes / n_train


class PassesWarning(L.Callback):
    """Warns at fit start when the planned passes over the training set reach ``warn_passes``."""

    def __init__(self, warn_passes: float):
        if not warn_passes > 0:
            raise ValueError(f"memorisation.warn_passes must be > 0 (or null: no warning), got {warn_passes}")
        self.warn_passes = warn_passes
        self.passes: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.max_steps is None or trainer.max_steps < 1 or datamodule is None:
            return
        n_train = len(split_dataset(datamodule, "train"))
        self.passes = planned_passes(trainer.max_steps, datamodule.batch_size, n_train, trainer.world_size)
        if self.passes < self.warn_passes or not trainer.is_global_zero:
            return
        message = (
            f"training plans {self.passes:.0f} passes over {n_train} training examples ({trainer.max_steps} steps "
            f"x batch {datamodule.batch_size * trainer.world_size}): a diffusion model trained this long on so "
            "little data tends to return training examples instead of new ones; add data, lower "
            "trainer.max_steps, or stop on the validation loss with early_stopping.patience=3 "
            f"(warned from memorisation.warn_passes={self.warn_passes:g} passes; samples/memorisation.json "
            "reports the copy share at the end)"
        )
        log.warning(message)
        warnings.warn(message, stacklevel=1)


def nearest_training(module: L.LightningModule, datamodule: L.LightningDataModule) -> NearestTraining:
    """The data module's training split in the domain's distance, with its validation split as the
    held-out reference."""
    held_out = split_examples(datamodule, "val")
    return NearestTraining(
        split_examples(datamodule, "train"),
        held_out if len(held_out) else None,
        DISTANCE_BY_DOMAIN.get(module.domain.name, "euclidean"),
    )


def ratio_threshold(config: dict) -> float:
    return (config.get("memorisation") or {}).get("threshold") or RATIO_THRESHOLD


class PreviewCopies(L.Callback):
    """Scores each training preview (``module.preview_samples``, left by the module's preview) against
    the training split: one log line, the ``preview/copy_share`` metric and a row of
    ``<run>/previews/memorisation.csv`` (step, copy share, median nearest distance over held-out data's)."""

    COLUMNS = ("step", "copy_share", "nearest_ratio", "n_samples")

    def __init__(self) -> None:
        self.reference: NearestTraining | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = getattr(pl_module, "preview_samples", None)
        pl_module.preview_samples = None
        if samples is None or trainer.sanity_checking or not trainer.is_global_zero or trainer.datamodule is None:
            return
        if self.reference is None:
            self.reference = nearest_training(pl_module, trainer.datamodule)
        result = self.reference.score(samples.detach().cpu(), ratio_threshold(pl_module.config))
        step = trainer.global_step
        log.info(f"preview at step {step}: {result.summary()}")
        for logger in trainer.loggers:
            logger.log_metrics({"preview/copy_share": result.copy_share}, step=step)
        path = Path(trainer.default_root_dir) / "previews" / "memorisation.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(self.COLUMNS)
            ratio = "" if result.nearest_ratio is None else f"{result.nearest_ratio:.4f}"
            writer.writerow([step, f"{result.copy_share:.4f}", ratio, result.n_samples])


def training_callbacks(config: dict) -> list[L.Callback]:
    """The memorisation warning, the previews' copy share and, when ``early_stopping.patience`` is set,
    early stopping."""
    found: list[L.Callback] = []
    settings = config.get("memorisation") or {}
    warn_passes = settings.get("warn_passes")
    if warn_passes is not None:
        found.append(PassesWarning(warn_passes))
    if settings.get("previews", True):
        found.append(PreviewCopies())
    stopping = config.get("early_stopping") or {}
    patience = stopping.get("patience")
    if patience is not None:
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"early_stopping.patience must be a whole number of validations >= 1 (or null: off), got {patience!r}"
            )
        min_delta = stopping.get("min_delta", 0.0)
        if not min_delta >= 0:
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {min_delta}")
        found.append(EarlyStopping(monitor="val/loss", mode="min", patience=patience, min_delta=min_delta))
    return found


def copy_report(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    samples: Tensor,
    out_dir: str | Path | None = None,
) -> dict:
    """Memorisation measures of ``samples`` (model space, as ``module.generate`` returns them) against
    the data module's training split, with its validation split as the held-out reference. With
    ``out_dir``, prints the summary and writes ``out_dir/memorisation.json``. Returns the measures as
    a dict (with ``summary``, one line)."""
    result = nearest_training(module, datamodule).score(samples.detach().cpu(), ratio_threshold(module.config))
    report = {**result.to_dict(), "summary": result.summary()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "memorisation.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"memorisation of the final samples: {report['summary']}")
    return report
