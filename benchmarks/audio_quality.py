"""Class-conditional audio quality per sampler and number of network evaluations (NFE).

A small CNN classifier is trained (seeded, a few epochs) on the log-mel spectrograms of the training
split the diffusion model saw (the checkpoint's own domain, codec settings and split). For each sampler
and NFE the checkpoint draws ``--n-per-class`` samples of every class with classifier-free guidance
``--guidance``. The samples are log-mel spectrograms and are scored as the domain reads them (clipped
to [-1, 1], as its decoder does):

- accuracy: how often the classifier recognises the class that was asked for, with a 95% Wilson
  interval, and the worst class;
- FD: the Frechet distance between samples and the training split in the classifier's penultimate
  features, next to its floor, the held-out split's own distance to the training split with the same
  features and sample size;
- memorisation: the share of samples the ratio test calls copies of a training clip, and the median
  distance to the nearest training clip over the held-out split's, in log-mels and in the classifier's
  features (``toolkit.metrics.memorisation``).

The dpmpp_2m samples at 20 NFE also make the waveform round trip (``domain.decode``: mel inversion and
Griffin-Lim to sound; ``domain.encode``: back to log-mels), which is what a listener hears; the held-out
split makes the same trip, so the codec's own loss is known.

    python benchmarks/audio_quality.py --ckpt runs/audio/<run>/checkpoints/last.ckpt

Writes benchmarks/results/audio.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.common import (  # noqa: E402
    COPY_HEADER,
    FD_REPEATS,
    Copies,
    MeasuredRows,
    Reference,
    classify,
    copies,
    copy_cells,
    copy_note,
    domain_splits,
    draw_samples,
    fit_classifier,
    markdown_table,
    reference_for,
    score,
    steps_for_nfe,
    stopwatch,
    training_summary,
    wilson_interval,
    write_results,
)
from toolkit.core import sampler  # noqa: E402

SAMPLERS = ("ddim", "dpmpp_2m", "heun", "euler", "ddpm")
NFES = (10, 20, 50)
DEFAULT_N_PER_CLASS = 20
ROUND_TRIP_METHOD, ROUND_TRIP_NFE = "dpmpp_2m", 20
TARGET_NFE, TARGET_ACCURACY = 20, 0.80
MAX_SHIFT_FRAMES = 4
MAX_GAIN = 0.1  # model units; 5 dB with the default log-mel range of 100 dB
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "audio.md"
SCRIPT = "benchmarks/audio_quality.py"
CKPT_PLACEHOLDER = "runs/audio/<run>/checkpoints/last.ckpt"


class SpectrogramClassifier(nn.Module):
    """Three conv blocks that each halve the resolution, then a dense layer whose output
    (``features``) is the space the Frechet distance is measured in. Takes log-mels
    ``[n, 1, n_mels, frames]`` in [-1, 1] of any size >= 8 (adaptive pooling to 4x4)."""

    def __init__(self, num_classes: int, feature_dim: int = 64):
        super().__init__()
        blocks = []
        for channels_in, channels_out in ((1, 16), (16, 32), (32, 64)):
            blocks += [
                nn.Conv2d(channels_in, channels_out, 3, padding=1),
                nn.BatchNorm2d(channels_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(
            *blocks, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU()
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, log_mels: Tensor) -> Tensor:
        return self.body(log_mels)

    def forward(self, log_mels: Tensor) -> Tensor:
        return self.head(self.features(log_mels))


def jitter(
    log_mels: Tensor,
    generator: torch.Generator,
    max_shift: int = MAX_SHIFT_FRAMES,
    max_gain: float = MAX_GAIN,
) -> Tensor:
    """Each log-mel moved by up to ``max_shift`` frames in time (silence, -1, fills in) and made
    louder or quieter by up to ``max_gain`` model units; silent bins stay silent."""
    n, frames = len(log_mels), log_mels.shape[-1]
    padded = F.pad(log_mels, (max_shift, max_shift), value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    index = (offsets[:, None] + torch.arange(frames)).reshape(n, 1, 1, frames)
    shifted = padded.gather(-1, index.expand(*log_mels.shape))
    gain = (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1) * max_gain
    return torch.where(shifted > -1, (shifted + gain).clamp(-1, 1), shifted)


def train_classifier(
    log_mels: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> SpectrogramClassifier:
    """The classifier fitted to ``log_mels`` with time-shift and gain jitter; seeded, so the same
    data gives the same classifier."""
    torch.manual_seed(seed)
    model = SpectrogramClassifier(num_classes)
    return fit_classifier(model, log_mels, labels, epochs, batch_size, lr, seed, augment=jitter)


def waveform_round_trip(domain, log_mels: Tensor) -> Tensor:
    """Log-mels -> sound (``domain.decode``) -> log-mels (``domain.encode``): the spectrogram of what
    a listener hears."""
    return domain.encode(torch.from_numpy(domain.decode(log_mels)))


@dataclass
class Scored:
    """Classifier verdict on a set of log-mels: accuracy (``correct`` of ``n``), the accuracy per
    class asked for, FD to the training split and the floor at the same sample size."""

    name: str
    n: int
    correct: int
    per_class: dict[int, float]
    fd: float
    floor: float
    copies: Copies | None = None

    @property
    def worst_class_accuracy(self) -> float:
        return min(self.per_class.values())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def scored(name: str, reference: Reference, log_mels: Tensor, labels: Tensor, num_classes: int) -> Scored:
    """The classifier's verdict on ``log_mels`` drawn (or recorded) for ``labels``."""
    accuracy, _, fd, _ = score(reference, log_mels, labels, num_classes)
    correct = torch.from_numpy(classify(reference.classifier, log_mels)[0]) == labels
    per_class = {c: float(correct[labels == c].float().mean()) for c in labels.unique().tolist()}
    n = len(labels)
    floor = reference.floor_at(min(n, reference.held_out_size))
    return Scored(name, n, round(accuracy * n), per_class, fd, floor, copies(reference, log_mels))


@dataclass
class Row:
    """One sampler at one NFE budget: its settings, its score and its wall time per sample."""

    method: str
    budget: int
    nfe: int
    steps: int
    result: Scored
    ms_per_sample: float
    guidance: float = 1.0


@dataclass
class Benchmark:
    """Everything the report needs: the classifier reference, the sampler rows and the round trip
    (held-out clips and samples, each as spectrograms and after the waveform round trip)."""

    reference: Reference
    rows: list[Row]
    round_trip: list[Scored]
    swept: list[Row] = field(default_factory=list)


def run(
    module,
    n_per_class: int,
    samplers: Sequence[str],
    nfes: Sequence[int],
    guidance: float,
    batch_size: int,
    classifier_epochs: int,
    seed: int,
    log: Callable[[str], None] = print,
    sweep: tuple[str, int, Sequence[float]] | None = None,
) -> Benchmark:
    """Train the classifier, score the held-out split through the round trip, then every sampler
    at every NFE; dpmpp_2m at 20 NFE (when in the grid) also through the round trip. ``sweep``
    (sampler, NFE, guidance scales) adds one row per scale."""
    domain = module.domain
    num_classes = domain.num_classes
    (train_x, train_labels), (held_out_x, held_out_labels) = domain_splits(domain)
    with stopwatch() as watch:
        classifier = train_classifier(train_x, train_labels, num_classes, classifier_epochs, seed=seed)
    reference = reference_for(classifier, train_x, held_out_x, held_out_labels)
    log(
        f"classifier: {100 * reference.classifier_accuracy:.1f}% on the held-out split "
        f"({watch.seconds:.0f} s to train); floor FD {reference.floor:.2f}"
    )
    held_out_trip = waveform_round_trip(domain, held_out_x)
    round_trip = [
        scored("held-out clips", reference, held_out_x, held_out_labels, num_classes),
        scored("held-out clips, waveform round trip", reference, held_out_trip, held_out_labels, num_classes),
    ]
    labels = torch.arange(n_per_class * num_classes) % num_classes
    log(format_rows([])[0])

    def row(method: str, budget: int, scale: float) -> tuple[Row, Tensor]:
        steps = steps_for_nfe(method, budget, module.schedule)
        with stopwatch() as watch:
            samples, nfe = draw_samples(module, labels, method, steps, scale, batch_size)
            samples = samples.clamp(-1, 1)
        result = scored(method, reference, samples, labels, num_classes)
        drawn = Row(method, budget, nfe, steps, result, 1000 * watch.seconds / len(labels), scale)
        log(format_rows([drawn])[-1])
        return drawn, samples

    measured = MeasuredRows(row)
    rows = []
    for method in samplers:
        for budget in nfes:
            drawn, samples = measured(method, budget, guidance)
            rows.append(drawn)
            if (method, budget) == (ROUND_TRIP_METHOD, ROUND_TRIP_NFE):
                name = f"{method} samples at {budget} NFE"
                trip = waveform_round_trip(domain, samples)
                round_trip.append(scored(name, reference, samples, labels, num_classes))
                round_trip.append(scored(f"{name}, waveform round trip", reference, trip, labels, num_classes))
    swept = [drawn for drawn, _ in measured.sweep(*sweep)] if sweep is not None else []
    return Benchmark(reference, rows, round_trip, swept)


def score_cells(s: Scored) -> list[str]:
    low, high = s.interval
    return [
        f"{100 * s.accuracy:.1f}",
        f"{100 * low:.0f}-{100 * high:.0f}",
        f"{100 * s.worst_class_accuracy:.0f}",
        f"{s.fd:.2f}",
        f"{s.fd / s.floor:.2f}",
        *copy_cells(s.copies),
    ]


SCORE_HEADER = ["accuracy %", "95% interval", "worst class %", "FD", "FD / floor", *COPY_HEADER]


def format_rows(rows: Sequence[Row]) -> list[str]:
    header = ["sampler", "NFE", "steps", *SCORE_HEADER, "ms / sample", "guidance"]
    cells = [
        [r.method, r.nfe, r.steps, *score_cells(r.result), f"{r.ms_per_sample:.0f}", f"{r.guidance:g}"] for r in rows
    ]
    return markdown_table(header, cells)


def format_round_trip(results: Sequence[Scored]) -> list[str]:
    cells = [[s.name, s.n, *score_cells(s)] for s in results]
    return markdown_table(["log-mels", "n", *SCORE_HEADER], cells)


def verdict(rows: Sequence[Row]) -> list[str]:
    """One sentence per sampler at the target NFE: does it reach the target accuracy, and does the
    95% interval settle it."""
    lines = []
    for r in (r for r in rows if r.budget == TARGET_NFE):
        low, high = r.result.interval
        state = "meets the target" if r.result.accuracy >= TARGET_ACCURACY else "misses the target"
        certain = low >= TARGET_ACCURACY or high < TARGET_ACCURACY
        sure = "" if certain else f", but the 95% interval {100 * low:.0f}-{100 * high:.0f}% contains it"
        lines.append(f"- {r.method}, {r.nfe} NFE: {100 * r.result.accuracy:.1f}%, {state}{sure}.")
    return lines


def observations(bench: Benchmark, n_per_class: int, guidance: float, class_names: Sequence[str]) -> list[str]:
    """Sentences read off the numbers: the round trip, the spread between samplers, FD below the
    floor, sample size."""
    lines = []
    reference, trip = bench.reference, {s.name: s for s in bench.round_trip}
    held_out = trip["held-out clips, waveform round trip"]
    lines.append(
        "The codec alone: real held-out clips decoded to sound and encoded again are recognised "
        f"{100 * held_out.accuracy:.1f}% of the time (as spectrograms: "
        f"{100 * reference.classifier_accuracy:.1f}%); their FD rises to {held_out.fd / held_out.floor:.2f}x "
        "the floor."
    )
    name = f"{ROUND_TRIP_METHOD} samples at {ROUND_TRIP_NFE} NFE"
    if name in trip:
        before, after = trip[name], trip[f"{name}, waveform round trip"]
        per_class = ", ".join(
            f"{class_names[c]} {100 * accuracy:.0f}%" for c, accuracy in sorted(before.per_class.items())
        )
        lines.append(
            f"What a listener hears: {ROUND_TRIP_METHOD} samples at {ROUND_TRIP_NFE} NFE are recognised "
            f"{100 * after.accuracy:.1f}% of the time after the waveform round trip, "
            f"{100 * before.accuracy:.1f}% as spectrograms. Per class asked for (spectrograms): {per_class}."
        )
    if bench.rows:
        worst = min(bench.rows, key=lambda r: (r.result.accuracy, -r.result.fd))
        best = max(bench.rows, key=lambda r: (r.result.accuracy, -r.result.fd))
        lines.append(
            f"Across the grid accuracy runs from {100 * worst.result.accuracy:.1f}% ({worst.method}, "
            f"{worst.nfe} NFE) to {100 * best.result.accuracy:.1f}% ({best.method}, {best.nfe} NFE). With "
            f"{bench.rows[0].result.n} samples per row a 95% interval spans about "
            f"{100 * interval_width(bench.rows[0].result.n):.0f} points at 85% accuracy, so rows closer than "
            "that are not told apart by this run."
        )
        below = [r for r in bench.rows if r.result.fd < r.result.floor]
        if below:
            lines.append(
                f"{len(below)} of {len(bench.rows)} rows have FD below the floor: at guidance {guidance:g} "
                "the samples sit nearer the training clips in the classifier's features than real unseen "
                "clips do. FD cannot tell typical, clearly spoken digits from less variety or copies of "
                "training clips; listen to the WAVs."
            )
    if n_per_class < DEFAULT_N_PER_CLASS:
        lines.append(
            f"This run drew {n_per_class} per class, fewer than the default {DEFAULT_N_PER_CLASS} samples, "
            "to keep it within its CPU time; FD from so few samples is noisy, and is compared with a floor "
            "from held-out subsets of the same size."
        )
    return ["", *lines]


def interval_width(n: int, accuracy: float = 0.85) -> float:
    low, high = wilson_interval(round(accuracy * n), n)
    return high - low


def report(module, ckpt: Path, bench: Benchmark, args, seconds: float) -> list[str]:
    domain, config = module.domain, module.config
    reference = bench.reference
    n = args.n_per_class * domain.num_classes
    return [
        *training_summary(module, ckpt),
        f"- Data: {config['domain'].get('root') or 'the shipped spoken digits'}, log-mels "
        f"{'x'.join(map(str, domain.sample_shape))} ({domain.sample_rate} Hz, n_fft {domain.n_fft}, hop "
        f"{domain.hop_length}), held-out fraction {domain.val_fraction} per class (split seed "
        f"{domain.split_seed}); Griffin-Lim {config['domain']['griffin_lim_iters']} iterations",
        f"- Samples: {args.n_per_class} per class ({n} in all), guidance {args.guidance:g}, seeds 0..{n - 1} "
        f"for every row; {torch.get_num_threads()} thread(s), batches of {args.batch_size}; whole run "
        f"{seconds / 60:.1f} min. ms / sample is the wall time of drawing (guidance doubles each network "
        "call's batch) on a machine other jobs may share",
        f"- Classifier: small CNN on log-mels trained {args.classifier_epochs} epochs (seed {args.seed}) on "
        f"the training split ({len(reference.train_features)} clips) with time-shift and gain jitter; "
        f"accuracy on the held-out split **{100 * reference.classifier_accuracy:.1f}%** "
        f"({reference.held_out_size} clips)",
        "- NFE = network evaluations per sample, counted during sampling; Heun makes 2 per step but the last",
        "- FD: Frechet distance to the training split in the classifier's "
        f"{reference.train_features.shape[1]}-d penultimate features, at the held-out size "
        f"({reference.held_out_size}; the mean over {FD_REPEATS} "
        "random subsets when there are more samples) or at the number of samples when there are fewer; "
        "'FD / floor' divides by the held-out split's own FD at that same size. The classifier was fitted "
        "to the training clips, so the floor is where real unseen clips land, not a lower bound",
        f"- **Floor: FD(held-out split, training split) = {reference.floor:.2f}** "
        f"({reference.held_out_size} held-out clips)"
        + (
            f"; at the samples' size ({n}) it is **{reference.floor_at(n):.2f}** (mean over {FD_REPEATS} "
            "random held-out subsets), which is what the sampler rows' 'FD / floor' divides by"
            if n < reference.held_out_size
            else ""
        ),
        copy_note("log-mels", reference),
        "",
        f"## Samplers at guidance {args.guidance:g}",
        "",
        *format_rows(bench.rows),
        "",
        "## Spectrograms and what a listener hears (waveform round trip)",
        "",
        *format_round_trip(bench.round_trip),
        "",
        f"## Against the target ({TARGET_NFE} NFE: the classifier recognises >= {100 * TARGET_ACCURACY:.0f}% "
        "of class-conditional samples)",
        "",
        *verdict(bench.rows),
        *observations(bench, args.n_per_class, args.guidance, domain.class_names),
        *guidance_section(bench.swept),
    ]


def guidance_section(swept: Sequence[Row]) -> list[str]:
    """The guidance sweep's rows and what they show, or nothing without a sweep."""
    if not swept:
        return []
    trend = "; ".join(
        f"{r.guidance:g}: {100 * r.result.accuracy:.1f}%, FD {r.result.fd / r.result.floor:.2f}x" for r in swept
    )
    return [
        "",
        f"## Guidance at {swept[0].budget} NFE ({swept[0].method})",
        "",
        *format_rows(swept),
        "",
        f"Accuracy and FD / floor per guidance scale: {trend}.",
    ]


def reproduce_command(argv: Sequence[str]) -> str:
    return common.reproduce_command(argv, SCRIPT, CKPT_PLACEHOLDER)


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint of `python -m toolkit.train domain=audio`")
    parser.add_argument("--n-per-class", type=int, default=DEFAULT_N_PER_CLASS, help="samples per class for every row")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--sweep-guidance", type=float, nargs="*", default=[], help="guidance scales to sweep")
    parser.add_argument("--sweep-sampler", default="unipc", choices=sorted(sampler.SAMPLERS))
    parser.add_argument("--sweep-nfe", type=int, default=10, help="NFE of the guidance sweep")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=sorted(sampler.SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=10,
        help="samples per sampler call (small batches run fastest on CPU)",
    )
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="classifier seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("n_per_class", "batch_size", "classifier_epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(nfe < 1 for nfe in args.nfe):
        parser.error(f"--nfe values must be >= 1, got {args.nfe}")
    torch.set_num_threads(args.threads)

    from toolkit.module import load_module

    with stopwatch() as total:
        module = load_module(args.ckpt)
        bench = run(
            module,
            args.n_per_class,
            args.samplers,
            args.nfe,
            args.guidance,
            args.batch_size,
            args.classifier_epochs,
            args.seed,
            sweep=(args.sweep_sampler, args.sweep_nfe, args.sweep_guidance) if args.sweep_guidance else None,
        )
    body = report(module, args.ckpt, bench, args, total.seconds)
    path = write_results(args.out, "Audio quality: class-conditional spoken digits", reproduce_command(argv), body)
    print("\n".join(body))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
