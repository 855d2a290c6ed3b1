"""The contract every modality adapter fulfils (see shared/DESIGN.md).

The LightningModule, the train and sample CLIs only ever talk to a `Domain`; they know
nothing of pixels, sound, points or tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

# Names every domain's ``save`` uses, so that outputs look the same whatever the modality.
SAMPLES_FILE = "samples.npz"  # the samples as arrays, with ``labels`` and ``seeds``
GRID_FILE = "grid.png"  # one picture of all samples
STRIP_FILE = "strip.png"  # the progression from noise to result


@dataclass
class TrainingBatch:
    """What the loss needs from one batch: clean model-space data, conditioning, and the
    mask of elements that count in the loss (1 = counts; None = all)."""

    x: Tensor
    cond: dict[str, Tensor] = field(default_factory=dict)
    loss_mask: Tensor | None = None


class Domain:
    """Adapter between one modality's files and model-space tensors `[B, *sample_shape]`.

    Subclasses set `name`, `sample_shape` and `num_classes` (0 = unconditional; otherwise
    labels are ints in [0, num_classes) and `num_classes` itself is the null label used for
    classifier-free guidance) and implement the methods below.
    """

    name: str = "base"
    sample_shape: tuple[int, ...] = ()
    num_classes: int = 0
    class_names: list[str] | None = None

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> L.LightningDataModule:
        """Batches are dicts: `x` (float32 model space), optional `label` (int64 [B]),
        optional `mask` (float [B, ...], 1 = observed/valid)."""
        raise NotImplementedError

    def build_net(self) -> nn.Module:
        """The denoiser network: `net(x_t, t, **cond) -> prediction` of the configured target."""
        raise NotImplementedError

    def training_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> TrainingBatch:
        """Default: data as is, labels as conditioning, the batch mask as loss mask."""
        cond = {"label": batch["label"]} if "label" in batch and self.num_classes else {}
        return TrainingBatch(x=batch["x"], cond=cond, loss_mask=batch.get("mask"))

    def null_cond(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unconditional branch for classifier-free guidance: every label -> null label."""
        if "label" not in cond:
            return cond
        return {**cond, "label": torch.full_like(cond["label"], self.num_classes)}

    def wrap_denoiser(self, denoiser):
        """The denoiser samplers use: ``denoiser`` itself, or a small wrapper around it that applies
        this domain's own knowledge (e.g. a per-window offset) read from the conditioning."""
        return denoiser

    def checkpoint_kwargs(self) -> dict:
        """Constructor kwargs learned from data (e.g. normalisation, class names), merged into the
        domain config saved with a checkpoint so that the domain rebuilds without its data."""
        return {}

    def sampling_inputs(self, n: int, labels: Tensor | None = None, seed: int = 0) -> dict:
        """Sampler keyword arguments for ``n`` samples: ``cond`` (labels round-robin over the
        classes unless given) and, for domains that generate around data, a known region."""
        if not self.num_classes:
            return {}
        if labels is None:
            labels = torch.arange(n) % self.num_classes
        labels = torch.as_tensor(labels, dtype=torch.long).expand(n)
        if (labels < 0).any() or (labels >= self.num_classes).any():
            raise ValueError(f"labels must be in [0, {self.num_classes}); got {labels.unique().tolist()}")
        return {"cond": {"label": labels}}

    def edit_inputs(self, edit: str, n: int, **options) -> dict:
        """Sampler keyword arguments for an edit of user data (e.g. ``inpaint``); may include a
        ``shape`` when the edit changes the sample size."""
        raise ValueError(f"the {self.name} domain has no edits; got edit={edit!r}")

    def decode(self, x: Tensor):
        """Model space -> the modality's raw data (numpy arrays in data scale)."""
        raise NotImplementedError

    def preview(self, x: Tensor, path: Path, labels: Tensor | None = None) -> Path:
        """One picture of a batch of samples (a grid), for training previews and README."""
        raise NotImplementedError

    def save(
        self,
        x: Tensor,
        out_dir: Path,
        labels: Tensor | None,
        seeds: list[int],
        trajectory: Tensor | None = None,
    ) -> list[Path]:
        """Write what users open (PNG/WAV/PLY/CSV per sample, a grid, the progression strip
        from `trajectory` [steps, n, ...] of x0 predictions, `samples.npz`) and return the paths."""
        raise NotImplementedError
