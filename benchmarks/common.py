"""Helpers shared by the quality benchmarks (image, audio, point clouds).

- ``frechet_distance``: the Frechet distance between Gaussian fits of two feature sets (FID's formula).
- ``steps_for_nfe``: the number of sampler steps that spends a given number of network evaluations.
- ``stopwatch``: wall time of a block.
- ``write_results``: a markdown results file that names the machine and the command that reproduces it.
- Class-conditional quality with a small classifier trained on the model's own training split:
  ``domain_splits``, ``fit_classifier``, ``classify``, ``reference_for`` (classifier accuracy and the FD
  floor), ``score`` (accuracy and FD of samples), ``wilson_interval`` (the accuracy's uncertainty),
  ``draw_samples`` (samples and counted NFE).
- Memorisation beside accuracy and FD: ``copies`` (the ratio-test copy share and the nearest-training
  distance against held-out data's, in the scored input space and in the classifier's features; see
  ``toolkit.metrics.memorisation``), ``copy_cells`` and ``copy_note`` for the results files.
- ``training_summary``, ``trained_steps`` and ``reproduce_command``: what a results file says about the
  checkpoint and the run.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.core import sampler
from toolkit.metrics.memorisation import Memorisation, NearestTraining


def frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) -> float:
    """Squared 2-Wasserstein distance between N(mean_a, cov_a) and N(mean_b, cov_b):
    ``|mean_a - mean_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_b^1/2 cov_a cov_b^1/2)^1/2)``.

    The matrix square roots come from symmetric eigendecompositions in float64, which stay real and
    stable for the rank-deficient covariances of small feature sets (where ``scipy.linalg.sqrtm`` of
    the non-symmetric product can return complex noise).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mean_a.size, mean_a.size):
        raise ValueError(
            f"mismatched moments: means {mean_a.shape} and {mean_b.shape}, covariances {cov_a.shape} and "
            f"{cov_b.shape}; both Gaussians need a mean [d] and a covariance [d, d] of the same d"
        )
    values, vectors = np.linalg.eigh((cov_b + cov_b.T) / 2)
    sqrt_b = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = sqrt_b @ cov_a @ sqrt_b
    cross = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    distance = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(distance, 0.0)


def feature_moments(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] of ``features`` [n, d], float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be an [n, d] array with n >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between the Gaussian fits of two feature sets [n_a, d] and [n_b, d].

    The estimate is biased upwards by roughly tr(cov)/n per set, so compare distances computed from
    sets of the same sizes (see ``matched_frechet_distance``).
    """
    mean_a, cov_a = feature_moments(features_a)
    mean_b, cov_b = feature_moments(features_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"feature sets differ in dimension: {mean_a.shape[0]} vs {mean_b.shape[0]}")
    return frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b)


def matched_frechet_distance(features, reference, size: int, repeats: int = 10, seed: int = 0) -> float:
    """Mean Frechet distance from random subsets of ``size`` rows of ``features`` to ``reference``:
    the same estimator bias as a distance computed from a set of ``size`` rows (e.g. a floor
    measured with a held-out split of that size). All rows are used once when there are no more."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) <= size:
        return frechet_distance(features, reference)
    rng = np.random.default_rng(seed)
    subsets = [rng.choice(len(features), size, replace=False) for _ in range(repeats)]
    return float(np.mean([frechet_distance(features[rows], reference) for rows in subsets]))


def count_evaluations(method: str, steps: int, schedule) -> int:
    """Denoiser evaluations one run of ``method`` with ``steps`` steps makes per sample; with
    classifier-free guidance each evaluation is one network call on the doubled batch."""
    calls = 0

    def zero_denoiser(x_t: Tensor, t: Tensor, **cond) -> Tensor:
        nonlocal calls
        calls += 1
        return torch.zeros_like(x_t)

    sampler.sample(zero_denoiser, (1, 1), schedule, method=method, steps=steps)
    return calls


def steps_for_nfe(method: str, nfe: int, schedule) -> int:
    """The most steps whose run makes at most ``nfe`` evaluations (Heun, 2 per step but the last:
    (nfe + 1) // 2)."""
    for steps in range(nfe, 0, -1):
        if count_evaluations(method, steps, schedule) <= nfe:
            return steps
    raise ValueError(f"{method} needs more than {nfe} evaluations even with one step; ask for more")


@dataclass
class Stopwatch:
    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """``with stopwatch() as watch: ...`` leaves the block's wall time in ``watch.seconds``."""
    watch = Stopwatch()
    started = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - started


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """One line naming the machine: CPUs, threads torch uses, Python and torch versions."""
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), torch using {torch.get_num_threads()} thread(s); "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def write_results(path: str | Path, title: str, command: str, body: Sequence[str] | str) -> Path:
    """Write a markdown results file: the title, the date, the machine and the reproduce command,
    then ``body`` (lines or one string)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = body if isinstance(body, str) else "\n".join(body)
    header = [
        f"# {title}",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine_description()}",
        f"- Reproduce: `{command}`",
        "",
    ]
    path.write_text("\n".join(header) + text.rstrip("\n") + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> list[str]:
    """A markdown table as lines; ``align`` is one of ``l``/``r`` per column (default: first left,
    others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row and the alignment need {len(header)} cells")
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(str(cell) for cell in line) + " |" for line in (header, rule, *rows)]


# --- class-conditional quality, judged by a small classifier ----------------------------------

FD_REPEATS = 10


def domain_splits(domain) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(x, labels)`` of the training and of the held-out split of the domain's data module, in
    model space: the examples the diffusion model trained on and the ones it never saw."""
    if not domain.num_classes:
        raise ValueError("the checkpoint is unconditional; this benchmark needs class labels (domain.conditional)")
    datamodule = domain.datamodule(batch_size=1)
    train, held_out = datamodule.train_set.tensors, datamodule.val_set.tensors
    if len(held_out["x"]) < 2:
        raise ValueError(
            f"the held-out split has {len(held_out['x'])} example(s), fewer than 2; train with domain.val_fraction > 0"
        )
    return (train["x"], train["label"]), (held_out["x"], held_out["label"])


def fit_classifier(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> nn.Module:
    """Adam with a one-cycle learning rate on cross-entropy; batch order and ``augment(batch,
    generator)`` draw from one generator seeded with ``seed``, so the same data and initial weights
    give the same classifier. Returned in eval mode."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * -(-len(labels) // batch_size))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = inputs[rows] if augment is None else augment(inputs[rows], generator)
            loss = F.cross_entropy(model(batch), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def classify(model: nn.Module, inputs: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels [n] and penultimate features [n, d] (float64) of a classifier with
    ``features(inputs)`` and a linear ``head`` on them."""
    predictions, features = [], []
    for start in range(0, len(inputs), batch_size):
        feature = model.features(inputs[start : start + batch_size])
        predictions.append(model.head(feature).argmax(dim=1))
        features.append(feature.double())
    return torch.cat(predictions).numpy(), torch.cat(features).numpy()


@dataclass
class Reference:
    """What samples are scored against: the classifier, its features of the training and held-out
    splits, its accuracy on the held-out split and the floor, FD(held-out split, training split)."""

    classifier: nn.Module
    train_features: np.ndarray
    held_out_features: np.ndarray
    classifier_accuracy: float
    floor: float
    nearest_inputs: NearestTraining | None = None  # the training split as the classifier takes it
    nearest_features: NearestTraining | None = None  # ... and in its penultimate features

    @property
    def held_out_size(self) -> int:
        return len(self.held_out_features)

    def floor_at(self, size: int) -> float:
        """The floor for a sample set of ``size`` rows: below the held-out size, the mean distance of
        random held-out subsets of that size (the same small-sample bias as the samples')."""
        if size >= self.held_out_size:
            return self.floor
        return matched_frechet_distance(self.held_out_features, self.train_features, size, FD_REPEATS)


def reference_for(classifier: nn.Module, train_inputs: Tensor, held_out_inputs: Tensor, held_out_labels: Tensor):
    """The ``Reference`` of a trained classifier (inputs as the classifier takes them)."""
    _, train_features = classify(classifier, train_inputs)
    predictions, held_out_features = classify(classifier, held_out_inputs)
    return Reference(
        classifier=classifier,
        train_features=train_features,
        held_out_features=held_out_features,
        classifier_accuracy=float((predictions == held_out_labels.numpy()).mean()),
        floor=frechet_distance(held_out_features, train_features),
        nearest_inputs=NearestTraining(train_inputs, held_out_inputs),
        nearest_features=NearestTraining(torch.from_numpy(train_features), torch.from_numpy(held_out_features)),
    )


def score(reference: Reference, inputs: Tensor, labels: Tensor, num_classes: int) -> tuple[float, float, float, float]:
    """Accuracy, worst per-class accuracy, FD at the held-out split's size (or at the number of
    samples when there are fewer; compare it with ``reference.floor_at`` that size) and FD of all
    samples, for samples ``inputs`` drawn for ``labels``."""
    predictions, features = classify(reference.classifier, inputs)
    correct = predictions == labels.numpy()
    per_class = [correct[labels.numpy() == c].mean() for c in range(num_classes) if (labels == c).any()]
    size = min(len(features), reference.held_out_size)
    return (
        float(correct.mean()),
        float(min(per_class)),
        matched_frechet_distance(features, reference.train_features, size, FD_REPEATS),
        frechet_distance(features, reference.train_features),
    )


@dataclass
class Copies:
    """Memorisation of one sample set in the scored input space (pixels, log-mels) and in the
    classifier's features."""

    inputs: Memorisation
    features: Memorisation


def copies(reference: Reference, inputs: Tensor) -> Copies:
    """The copy share and nearest-training distances of ``inputs`` (as the classifier takes them)
    against the training split, with the held-out split as the reference."""
    _, features = classify(reference.classifier, inputs)
    return Copies(reference.nearest_inputs.score(inputs), reference.nearest_features.score(torch.from_numpy(features)))


COPY_HEADER = ["copies % (in / feat)", "NN ratio (in / feat)"]


def copy_cells(c: Copies | None) -> list[str]:
    """Two table cells: the copy share and the nearest-distance ratio, input space / features."""
    if c is None:
        return ["-", "-"]
    return [
        f"{100 * c.inputs.copy_share:.1f} / {100 * c.features.copy_share:.1f}",
        f"{c.inputs.nearest_ratio:.2f} / {c.features.nearest_ratio:.2f}",
    ]


def copy_note(space: str, reference: Reference) -> str:
    """The results-file line that explains the copy columns, with the held-out split's own numbers."""
    shares = [100 * nearest.held_out_copy_share() for nearest in (reference.nearest_inputs, reference.nearest_features)]
    return (
        f"- Memorisation (`toolkit/metrics/memorisation.py`), in {space} ('in') and in the classifier's features "
        "('feat'): 'copies %' is the share of samples whose nearest training example is closer than 1/3 of the "
        "second nearest (the ratio test of Yoon et al. 2023 and Gu et al. 2023; L2 distance); 'NN ratio' is the "
        "median distance of samples to their nearest training example over that of the held-out split (1 = as "
        "close as real unseen data, below 1 = closer). The held-out split itself scores "
        f"{shares[0]:.1f} / {shares[1]:.1f}% copies"
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% at z = 1.96): unlike the normal approximation it
    stays inside [0, 1] and is honest at 0 or n successes and for small n."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


class MeasuredRows:
    """Rows measured once per (sampler, NFE budget, guidance scale) by ``measure``: a guidance sweep
    reuses the rows of the sampler grid instead of drawing them again."""

    def __init__(self, measure: Callable):
        self.measure, self.done = measure, {}

    def __call__(self, method: str, budget: int, guidance: float):
        key = (method, budget, guidance)
        if key not in self.done:
            self.done[key] = self.measure(*key)
        return self.done[key]

    def sweep(self, method: str, budget: int, scales: Sequence[float]) -> list:
        return [self(method, budget, scale) for scale in scales]


def draw_samples(
    module, labels: Tensor, method: str, steps: int, guidance: float, batch_size: int
) -> tuple[Tensor, int]:
    """Samples in model space for ``labels`` with seeds 0..n-1 (the same noise for every sampler),
    and the network calls one sample needed (counted, one batched call per evaluation)."""
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    hook = module.net.register_forward_pre_hook(count)
    try:
        out = module.generate(
            len(labels), seed=0, labels=labels, method=method, steps=steps, guidance=guidance, batch_size=batch_size
        )
    finally:
        hook.remove()
    batches = -(-len(labels) // batch_size)
    return out["x"], calls // batches


def trained_steps(ckpt: str | Path) -> int | str:
    """The optimiser steps a checkpoint was trained for (its ``global_step``; '?' if absent)."""
    return torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", "?")


def training_summary(module, ckpt: str | Path) -> list[str]:
    """Two results-file lines on how the checkpoint was trained and what it models, read from the
    checkpoint itself."""
    config = module.config
    net_cfg = config["domain"]["net"]
    net = {k: v for k, v in net_cfg.items() if k != "_target_"}
    optim, loss_cfg = config["optim"], config["loss"]
    return [
        f"- Checkpoint: `{ckpt}`, trained {trained_steps(ckpt)} steps (trainer.max_steps "
        f"{config['trainer']['max_steps']}), batch {config['data']['batch_size']}, lr {optim['lr']} "
        f"({optim.get('decay')}), EMA {config.get('ema', {}).get('decay')}, "
        f"label dropout {loss_cfg.get('p_uncond')}",
        f"- Model: {loss_cfg['target']}-prediction, {loss_cfg['weighting']} weighting, "
        f"{config['schedule']['name']} schedule; net {net_cfg['_target_']} {net}",
    ]


def reproduce_command(argv: Sequence[str], script: str, ckpt_placeholder: str) -> str:
    """``python script argv`` with the checkpoint path replaced by ``ckpt_placeholder`` (where the
    default training run writes it), so results files do not name one machine's temporary paths."""
    parts, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--ckpt" and i + 1 < len(argv):
            parts += ["--ckpt", ckpt_placeholder]
            skip = True
        elif arg.startswith("--ckpt="):
            parts.append(f"--ckpt={ckpt_placeholder}")
        else:
            parts.append(shlex.quote(arg))
    return " ".join([f"python {script}", *parts])
