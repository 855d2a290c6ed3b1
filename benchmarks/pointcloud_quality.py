"""Point-cloud generation quality per sampler and number of network evaluations (NFE).

Draws one sample per held-out shape (same class label) from a trained checkpoint with each
sampler at each NFE, and reports MMD-CD, COV-CD and 1-NNA-CD (PointFlow's definitions, see
``toolkit.metrics.pointcloud``) against the held-out split. The floor row compares training
shapes (one of the same class per held-out shape) with the held-out split: what a model that
reproduced its training set exactly would score.

Beside them, memorisation against the training split by Chamfer distance
(``toolkit.metrics.memorisation``): the share of samples the ratio test calls copies of a training
shape, and the median distance to the nearest training shape over the held-out shapes' own.

    python benchmarks/pointcloud_quality.py --ckpt runs/pointcloud/<run>/checkpoints/last.ckpt

Writes benchmarks/results/pointcloud.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, steps_for_nfe, stopwatch, write_results  # noqa: E402
from toolkit.core import sampler  # noqa: E402
from toolkit.metrics.memorisation import NearestTraining  # noqa: E402
from toolkit.metrics.pointcloud import pairwise_distances, set_metrics  # noqa: E402

SAMPLERS = ("ddim", "dpmpp_2m", "heun", "euler")
NFES = (10, 20, 50)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pointcloud.md"


@dataclass
class Row:
    name: str
    nfe: int | None
    steps: int | None
    metrics: dict[str, float]
    seconds: float | None


def class_matched_subset(points: Tensor, labels: Tensor, wanted: Tensor, seed: int = 0) -> Tensor:
    """One shape of ``points`` per entry of ``wanted`` with the same label, without repeats while a
    class has shapes left (a class with too few shapes repeats them)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.empty(len(wanted), dtype=torch.long)
    for label in wanted.unique():
        slots = (wanted == label).nonzero().flatten()
        pool = (labels == label).nonzero().flatten()
        if len(pool) == 0:
            raise ValueError(f"no training shape of class {int(label)} to compare with")
        order = pool[torch.randperm(len(pool), generator=gen)]
        chosen[slots] = order[torch.arange(len(slots)) % len(order)]
    return points[chosen]


def draw(
    module, labels: Tensor | None, n: int, method: str, steps: int, guidance: float | None, batch_size: int
) -> Tensor:
    """``n`` samples with seeds 0..n-1 (the same noise for every sampler), ``batch_size`` at a time."""
    guidance = 1.0 if guidance is None else guidance  # 1: none, whatever the checkpoint's default
    out = module.generate(
        n, seed=0, labels=labels, method=method, steps=steps, guidance=guidance, batch_size=batch_size
    )
    return out["x"].float().cpu()


def run_benchmark(
    module,
    samplers: Sequence[str] = SAMPLERS,
    nfes: Sequence[int] = NFES,
    guidance: float | None = None,
    batch_size: int = 50,
    max_reference: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Row], int]:
    """The floor row, then one row per (sampler, NFE) of ``module`` (a ``DiffusionModule``); and the
    number of reference shapes."""
    domain = module.domain
    held_out, train = domain.split("val"), domain.split("train")
    reference, ref_labels = held_out.points, held_out.labels
    if max_reference is not None and len(reference) > max_reference:
        keep = torch.linspace(0, len(reference) - 1, max_reference).round().long()
        reference, ref_labels = reference[keep], ref_labels[keep]
    if len(reference) < 2:
        raise ValueError("the held-out split has fewer than 2 shapes; raise domain.val_fraction")
    ref_ref = pairwise_distances(reference, reference, "cd")
    nearest = NearestTraining(train.points, reference, distance="chamfer")

    def metrics(samples: Tensor) -> dict[str, float]:
        copied = nearest.score(samples)
        return {
            **set_metrics(samples, reference, ref_ref=ref_ref),
            "copies": copied.copy_share,
            "nn-ratio": copied.nearest_ratio,
        }

    floor = class_matched_subset(train.points, train.labels, ref_labels)
    rows = [Row("floor: train vs held-out", None, None, metrics(floor), None)]
    log(f"floor: {rows[0].metrics}")
    labels = ref_labels if domain.num_classes > 0 else None
    for method in samplers:
        for nfe in nfes:
            steps = steps_for_nfe(method, nfe, module.schedule)
            with stopwatch() as watch:
                samples = draw(module, labels, len(reference), method, steps, guidance, batch_size)
            rows.append(Row(method, nfe, steps, metrics(samples), watch.seconds))
            log(f"{method} nfe={nfe} steps={steps}: {rows[-1].metrics} ({watch.seconds:.1f}s)")
    return rows, len(reference)


def describe(domain, ckpt: str | Path, guidance: float | None) -> list[str]:
    source = str(domain.data_dir) if domain.data_dir else f"procedural ({domain.shapes_per_class} per class)"
    classes = ", ".join(domain.class_names) if domain.class_names else "unlabelled"
    return [
        f"- Checkpoint: `{ckpt}`",
        f"- Data: {source}; classes: {classes}; {domain.num_points} points per shape, "
        f"normalisation {domain.normalization}",
        f"- Guidance: {'none' if guidance is None else guidance}",
    ]


def report(rows: Sequence[Row], num_reference: int, context: Sequence[str]) -> list[str]:
    table = [
        [
            row.name,
            "-" if row.nfe is None else row.nfe,
            "-" if row.steps is None else row.steps,
            f"{row.metrics['mmd-cd'] * 1e3:.3f}",
            f"{row.metrics['cov-cd'] * 100:.1f}",
            f"{row.metrics['1nna-cd'] * 100:.1f}",
            f"{row.metrics['copies'] * 100:.1f}",
            f"{row.metrics['nn-ratio']:.2f}",
            "-" if row.seconds is None else f"{row.seconds:.1f}",
        ]
        for row in rows
    ]
    return [
        *context,
        f"- Reference: {num_reference} held-out shapes; one sample per reference shape with its class "
        "label; seeds 0..n-1 for every sampler",
        "- CD = mean squared nearest-neighbour distance A->B plus B->A (PointFlow/PVD). MMD-CD x 10^3: "
        "lower is better; COV-CD %: higher is better; 1-NNA-CD %: 50 is ideal, 100 = fully separable, "
        "well below 50 = copies of the reference",
        "- NFE = denoiser evaluations per sample (counted); seconds = time to draw all samples",
        "- Memorisation against the training split by Chamfer distance: 'copies %' is the share of samples "
        "whose nearest training shape is closer than 1/3 of the second nearest (ratio test of Yoon et al. 2023 "
        "and Gu et al. 2023, on sqrt(CD)); 'NN ratio' is the median distance to the nearest training shape over "
        "the held-out shapes' (1 = as close as real unseen shapes, below 1 = closer). The floor row consists of "
        "training shapes, so it is all copies by construction",
        "",
        *markdown_table(
            ["sampler", "NFE", "steps", "MMD-CD x10^3", "COV-CD %", "1-NNA-CD %", "copies %", "NN ratio", "seconds"],
            table,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", type=Path, required=True, help="checkpoint of `python -m toolkit.train domain=pointcloud`"
    )
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=sorted(sampler.SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--batch-size", type=int, default=50, help="samples per sampler call")
    parser.add_argument("--max-reference", type=int, default=None, help="use at most this many held-out shapes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1 or any(nfe < 1 for nfe in args.nfe):
        parser.error("--batch-size, --threads and every --nfe must be >= 1")
    guidance = None if args.guidance in (None, 1.0) else args.guidance
    torch.set_num_threads(args.threads)

    from toolkit.module import load_module  # DiffusionModule.load_from_checkpoint: EMA weights, eval mode

    module = load_module(args.ckpt)
    rows, num_reference = run_benchmark(module, args.samplers, args.nfe, guidance, args.batch_size, args.max_reference)
    body = report(rows, num_reference, describe(module.domain, args.ckpt, guidance))
    command = shlex.join(["python", "benchmarks/pointcloud_quality.py", *argv])
    path = write_results(args.out, "Point-cloud generation quality", command, body)
    print("\n".join(body))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
