"""The contract every modality adapter fulfils (see shared/DESIGN.md).

The LightningModule, the train and sample CLIs only ever talk to a `Domain`; they know
nothing of pixels, sound, points or tables.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from toolkit import viz

# Names every domain's ``save`` uses, so that outputs look the same whatever the modality.
SAMPLES_FILE = "samples.npz"  # the samples as arrays, with ``labels`` and ``seeds``
GRID_FILE = "grid.png"  # one picture of all samples
STRIP_FILE = "strip.png"  # the progression from noise to result
STRIP_ROWS = 8  # samples shown in the strip, one row each
PROMPTS_FILE = "prompts.csv"  # with prompts: which prompt (and seed) made which sample's files


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
    classifier-free guidance) and implement the methods that raise NotImplementedError: the data
    module, the net, `decode`, and the two hooks of the saved outputs, `pictures` (one picture per
    sample) and `write_sample` (the files of one sample). `edit_options` names the keyword options
    of `edit_inputs` (the sample CLI passes those it is given). A domain trained on captioned data sets
    `text_encoder`; its batches then carry `tokens` (``tokenize`` of the captions) and its net takes
    them as conditioning.
    """

    name: str = "base"
    sample_shape: tuple[int, ...] = ()
    num_classes: int = 0
    class_names: list[str] | None = None
    edit_options: tuple[str, ...] = ()
    text_encoder: dict | None = None  # a conf/text_encoder config when the data is captioned (prompts)
    picture_scale: int = 1  # upscaling of the pictures in the grid and the strip

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> L.LightningDataModule:
        """Batches are dicts: `x` (float32 model space), optional `label` (int64 [B]), optional
        `tokens` (int64 [B, max_tokens], the captions' ``tokenize``), optional `mask` (float [B, ...],
        1 = observed/valid)."""
        raise NotImplementedError

    def build_net(self) -> nn.Module:
        """The denoiser network: `net(x_t, t, **cond) -> prediction` of the configured target."""
        raise NotImplementedError

    def build_net_from(
        self, config: dict | DictConfig | None, sizes: dict[str, int] | None = None, **given
    ) -> nn.Module:
        """The network of ``config`` (a Hydra dict with ``_target_``) with the arguments only the
        domain knows (``given``: channels, classes...) and, for a domain trained on captions, its
        ``text_encoder`` (not passed otherwise, so label and unconditional nets are built as before).
        ``sizes`` (setting name -> sample size) must be divisible by the network's ``size_multiple``
        (its down-sampling)."""
        if config is None:
            raise ValueError(
                f"the {self.name} domain needs a net config (a dict with _target_, see conf/domain/{self.name}.yaml)"
            )
        config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
        if self.text_encoder is not None:
            given = {**given, "text_encoder": dict(self.text_encoder)}
        net = hydra.utils.instantiate(config, **given)
        multiple = getattr(net, "size_multiple", 1)
        sizes = sizes or {}
        if any(size % multiple for size in sizes.values()):
            given_sizes = " and ".join(f"{name} {size}" for name, size in sizes.items())
            raise ValueError(
                f"{given_sizes} {'is' if len(sizes) == 1 else 'are'} not divisible by {multiple}, which the "
                f"network's down-sampling needs; change {' or '.join(sizes)} or the net's channel_mults"
            )
        return net

    def require_text_encoder(self) -> None:
        """Raise ValueError, saying what to do instead, unless this domain takes prompts."""
        if self.text_encoder is None:
            raise ValueError(
                f"this {self.name} model was not trained with captions, so it takes no prompt; "
                "train one on captioned data (e.g. experiment=image_prompts) or pass labels"
            )

    def tokenize(self, texts) -> Tensor:
        """Prompts or captions -> ``tokens`` [n, max_tokens] (see toolkit.text); "" is the null prompt."""
        self.require_text_encoder()
        from toolkit.text import build_tokenizer

        key = repr(sorted(self.text_encoder.items()))
        if getattr(self, "_tokenizer", (None, None))[0] != key:  # built once (an hf one reads its folder)
            self._tokenizer = (key, build_tokenizer(self.text_encoder))
        return self._tokenizer[1](texts)

    def training_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> TrainingBatch:
        """Default: data as is, labels and caption tokens as conditioning, the batch mask as loss mask."""
        cond = {"label": batch["label"]} if "label" in batch and self.num_classes else {}
        if "tokens" in batch and self.text_encoder is not None:
            cond["tokens"] = batch["tokens"]
        return TrainingBatch(x=batch["x"], cond=cond, loss_mask=batch.get("mask"))

    def null_cond(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unconditional branch for classifier-free guidance: every label -> null label, every
        prompt -> the empty prompt (all padding)."""
        null = dict(cond)
        if "label" in cond:
            null["label"] = torch.full_like(cond["label"], self.num_classes)
        if "tokens" in cond:
            null["tokens"] = torch.zeros_like(cond["tokens"])
        return null

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

    def label_name(self, label: int | None) -> str | None:
        """Class name of a label; None for no label, the null label or an unconditional domain."""
        if label is None or not self.class_names or not 0 <= label < len(self.class_names):
            return None
        return self.class_names[label]

    def decode(self, x: Tensor):
        """Model space -> the modality's raw data (numpy arrays in data scale)."""
        raise NotImplementedError

    def pictures(self, x: Tensor) -> np.ndarray:
        """One picture per sample, ``[n, H, W, C]`` floats in [0, 1]: the grid, the previews and the
        per-sample PNGs show these."""
        raise NotImplementedError

    def strip_pictures(self, x: Tensor) -> np.ndarray:
        """The pictures of the strip's frames (by default those of ``pictures``)."""
        return self.pictures(x)

    def write_sample(self, out_dir: Path, stem: str, data, picture: np.ndarray) -> list[Path]:
        """Write the files of one sample (``data``: its decoded raw data) and return their paths."""
        raise NotImplementedError

    def sample_stem(self, index: int, label: int | None, seed: int) -> str:
        """File name (without suffix) of sample ``index``: ``000_<class>_seed0``."""
        return "_".join(filter(None, [f"{index:03d}", self.label_name(label), f"seed{seed}"]))

    def sample_arrays(self, data) -> dict[str, np.ndarray]:
        """The decoded samples as ``samples.npz`` stores them, by key (README documents the keys)."""
        return {"x": data}

    def preview(self, x: Tensor, path: Path, labels: Tensor | None = None) -> Path:
        """One picture of a batch of samples: a grid, one row per label when labels are given."""
        return self.save_grid(self.pictures(x), path, labels)

    def save_grid(self, pictures: np.ndarray, path: Path, labels: Tensor | None) -> Path:
        """Pictures ``[n, H, W, C]`` tiled into one PNG, a row per label when labels are given."""
        ncol = None
        if labels is not None:
            pictures, ncol = viz.rows_by_label(pictures, labels.cpu().numpy())
        return viz.save_grid(pictures, path, ncol=ncol, scale=self.picture_scale)

    def save_strip(self, trajectory: Tensor, path: Path) -> Path:
        """The x0 estimates of ``trajectory`` [steps, n, ...] left to right, a row for each of the
        first ``STRIP_ROWS`` samples."""
        rows = trajectory[:, :STRIP_ROWS].transpose(0, 1)
        frames = self.strip_pictures(rows.reshape(-1, *rows.shape[2:]))
        return viz.save_strip(frames.reshape(*rows.shape[:2], *frames.shape[1:]), path, scale=self.picture_scale)

    def save(
        self,
        x: Tensor,
        out_dir: Path,
        labels: Tensor | None,
        seeds: list[int],
        trajectory: Tensor | None = None,
        prompts: list[str] | None = None,
    ) -> list[Path]:
        """Write what users open and return the paths: the files of each sample (``write_sample``),
        ``grid.png``, with a trajectory [steps, n, ...] of x0 estimates ``strip.png``, and
        ``samples.npz`` (``sample_arrays``, ``labels`` with -1 where none, ``seeds``, ``class_names``).
        With ``prompts`` (one per sample) ``samples.npz`` also holds ``prompts``, ``prompts.csv`` names
        each sample's file stem, seed and prompt, and without labels the grid has a row per prompt."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(x)
        if len(seeds) != n:
            raise ValueError(f"need one seed per sample: {n} samples but {len(seeds)} seeds")
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"need one prompt per sample: {n} samples but {len(prompts)} prompts")
        if trajectory is not None and tuple(trajectory.shape[1:]) != tuple(x.shape):
            raise ValueError(f"trajectory shape {tuple(trajectory.shape)} does not match [steps, *{tuple(x.shape)}]")
        label_list = [None] * n if labels is None else [int(label) for label in labels]
        data, pictures = self.decode(x), self.pictures(x)
        stems = [self.sample_stem(i, label, seed) for i, (label, seed) in enumerate(zip(label_list, seeds))]
        paths = []
        for i, stem in enumerate(stems):
            paths += self.write_sample(out_dir, stem, data[i], pictures[i])
        rows = labels
        if labels is None and prompts is not None:  # a grid row per prompt, in order of first use
            first_use = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
            rows = torch.tensor([first_use[prompt] for prompt in prompts])
        paths.append(self.save_grid(pictures, out_dir / GRID_FILE, rows))
        if trajectory is not None:
            paths.append(self.save_strip(trajectory, out_dir / STRIP_FILE))
        extra = {}
        if prompts is not None:
            extra["prompts"] = np.asarray(prompts, dtype=str)
            paths.append(write_prompts_csv(out_dir / PROMPTS_FILE, stems, seeds, prompts))
        np.savez_compressed(
            out_dir / SAMPLES_FILE,
            **self.sample_arrays(data),
            labels=np.array([-1 if label is None else label for label in label_list], dtype=np.int64),
            seeds=np.asarray(seeds, dtype=np.int64),
            class_names=np.asarray(self.class_names or [], dtype=str),
            **extra,
        )
        return [*paths, out_dir / SAMPLES_FILE]


def write_prompts_csv(path: Path, stems: list[str], seeds: list[int], prompts: list[str]) -> Path:
    """``file,seed,prompt`` per sample: which prompt (and seed) made the files named ``file``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "seed", "prompt"])
        writer.writerows(zip(stems, seeds, prompts))
    return path
