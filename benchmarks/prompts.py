"""Prompt adherence: does a text-conditioned model draw what the prompt asks for?

Images (``python -m toolkit.train experiment=image_prompts``): the shipped captioned digits name the
digit, the stroke weight and the slant ("a bold seven leaning right"). Each sample is measured the way
its caption was made (data/images/make_captioned_digits.py):

- digit: a small CNN trained (seeded) on the real digits' training split (benchmarks/image_quality.py's
  classifier); the share of samples it reads as the digit asked for;
- weight: ink mass, a binary check: a sample asked to be bold (thin) passes when its ink mass lies
  above (below) the median of real images of that digit (the midpoint of the caption terciles);
- slant: the shear of the ink's second moments, likewise: leaning right (left) passes above (below)
  the digit's median; "upright" prompts get the share within the caption's middle third.

Prompt sets: training-style (one caption per digit, weight and slant combination seen in training, in
its training wording), held-out combinations (the combinations kept out of training, in training
wordings) and paraphrases (wordings kept out of the captions, for seen combinations). Each at every
``--guidance``. The class-label model (``--label-ckpt``, the default image run) draws the same number
of samples per digit at the same guidance: the digit is the one attribute both can express.

    python benchmarks/prompts.py --ckpt runs/image/<time>/checkpoints/last.ckpt \
        --label-ckpt runs/image/<time>/checkpoints/last.ckpt

Writes benchmarks/results/prompts.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, reproduce_command, stopwatch, write_results  # noqa: E402
from benchmarks.image_quality import Split, train_classifier  # noqa: E402
from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, read_captions  # noqa: E402
from toolkit.domains.data import split_indices  # noqa: E402
from toolkit.domains.image import CAPTIONED_DIGITS_ROOT, load_digits_images  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prompts.md"
REPO = Path(__file__).resolve().parent.parent
FLOORS = {"training-style": 0.90, "held-out combinations": 0.70}
BINARY_FLOOR = 0.80
PROMPT_SETS = ("training-style", "held-out combinations", "paraphrases")


def caption_measures():
    """data/images/make_captioned_digits.py, which defines how captions were measured (ink mass,
    shear, terciles): the samples are measured by the same functions."""
    path = REPO / "data" / "images" / "make_captioned_digits.py"
    spec = importlib.util.spec_from_file_location("make_captioned_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Prompt:
    text: str
    digit: int
    weight: str  # "bold", "thin" or "" (not named)
    slant: str  # "left", "upright" or "right"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompt_sets(root: Path) -> dict[str, list[Prompt]]:
    """The three sets, each prompt once, in a fixed order."""

    def unique(rows) -> list[Prompt]:
        seen = {}
        for row in rows:
            prompt = Prompt(row["text"], int(row["digit"]), row["weight"], row["slant"])
            seen.setdefault(prompt.text, prompt)
        return sorted(seen.values(), key=lambda p: (p.digit, p.weight, p.slant, p.text))

    training = {}
    for row in read_captions(root).values():
        training.setdefault((int(row["digit"]), row["weight"], row["slant"]), row)  # first caption per combination
    return {
        "training-style": unique(training.values()),
        "held-out combinations": unique(read_jsonl(root / HELD_OUT_FILE)),
        "paraphrases": unique(row for row in read_jsonl(root / PARAPHRASES_FILE) if not row["held_out"]),
    }


@dataclass
class Measures:
    """What the captions' attributes are judged by: the classifier and each digit's medians and
    terciles of ink mass and shear over the real images."""

    classifier: torch.nn.Module
    classifier_accuracy: float
    ink_median: np.ndarray
    shear_median: np.ndarray
    shear_terciles: np.ndarray  # [10, 2]
    ink_mass: Callable[[np.ndarray], np.ndarray]
    shear: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def build(cls, epochs: int, seed: int) -> Measures:
        script = caption_measures()
        images, labels = load_digits_images(script.RESOLUTION)
        pixels = np.rint(images[:, 0].numpy() * 255) / 255.0  # as the PNGs store them
        train, held_out = split_indices(len(labels), 0.1, seed)
        unit = torch.from_numpy(pixels).float()[:, None]
        classifier = train_classifier(Split(unit[train], labels[train]), 10, epochs=epochs, seed=seed)
        with torch.no_grad():
            accuracy = (classifier(unit[held_out]).argmax(1) == labels[held_out]).float().mean().item()
        ink, slant, digits = script.ink_mass(pixels), script.shear(pixels), labels.numpy()
        return cls(
            classifier,
            accuracy,
            np.array([np.median(ink[digits == d]) for d in range(10)]),
            np.array([np.median(slant[digits == d]) for d in range(10)]),
            np.array([np.quantile(slant[digits == d], [1 / 3, 2 / 3]) for d in range(10)]),
            script.ink_mass,
            script.shear,
        )

    def digits(self, pixels: np.ndarray) -> np.ndarray:
        """The digit the classifier reads in each of ``pixels`` [n, 16, 16]."""
        with torch.no_grad():
            return self.classifier(torch.from_numpy(pixels).float()[:, None]).argmax(1).numpy()

    def judge(self, pixels: np.ndarray, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        """Per attribute, one pass/fail per sample that names it (pixels [n, 16, 16] in [0, 1])."""
        read = self.digits(pixels)
        ink, slant = self.ink_mass(pixels), self.shear(pixels)
        results: dict[str, list[bool]] = {"digit": [], "weight": [], "slant": [], "upright": []}
        for i, p in enumerate(prompts):
            results["digit"].append(bool(read[i] == p.digit))
            if p.weight:
                results["weight"].append(bool((ink[i] > self.ink_median[p.digit]) == (p.weight == "bold")))
            if p.slant == "upright":
                low, high = self.shear_terciles[p.digit]
                results["upright"].append(bool(low <= slant[i] <= high))
            else:
                results["slant"].append(bool((slant[i] > self.shear_median[p.digit]) == (p.slant == "right")))
        return results


@dataclass
class Row:
    model: str
    prompts: str
    guidance: float
    count: int
    shares: dict[str, tuple[float, int]]  # attribute -> (share passed, samples judged)
    ms_per_sample: float


def share(values: list[bool]) -> tuple[float, int]:
    return (statistics.mean(values) if values else float("nan"), len(values))


def draw(module, prompts: Sequence[str] | None, labels, n: int, guidance: float, batch_size: int) -> np.ndarray:
    """Samples 0..n-1 (seeds 0..n-1) as pixels [n, 16, 16] in [0, 1]."""
    out = module.generate(n, seed=0, prompt=prompts, labels=labels, guidance=guidance, batch_size=batch_size)
    return module.domain.decode(out["x"])[:, 0]


def run(module, label_module, measures: Measures, sets, per_prompt: int, guidances, batch_size: int, log=print):
    rows = []
    for guidance in guidances:
        for name in PROMPT_SETS:
            prompts = [p for p in sets[name] for _ in range(per_prompt)]
            started = time.perf_counter()
            pixels = draw(module, [p.text for p in prompts], None, len(prompts), guidance, batch_size)
            seconds = time.perf_counter() - started
            judged = measures.judge(pixels, prompts)
            rows.append(
                Row(
                    "prompts",
                    name,
                    guidance,
                    len(prompts),
                    {k: share(v) for k, v in judged.items()},
                    1000 * seconds / len(prompts),
                )
            )
            log(format_row(rows[-1]))
        if label_module is not None:
            n = -(-len(sets["training-style"]) * per_prompt // 10) * 10  # as many as training-style prompts
            labels = torch.arange(n) % 10
            started = time.perf_counter()
            pixels = draw(label_module, None, labels, n, guidance, batch_size)
            seconds = time.perf_counter() - started
            digit = (measures.digits(pixels) == labels.numpy()).tolist()
            rows.append(
                Row("class labels", "the digit's label", guidance, n, {"digit": share(digit)}, 1000 * seconds / n)
            )
            log(format_row(rows[-1]))
    return rows


HEADER = ["model", "prompts", "guidance", "samples", "digit %", "weight %", "slant %", "upright %", "ms / sample"]


def cell(value: tuple[float, int] | None) -> str:
    if value is None or value[1] == 0:
        return "-"
    return f"{100 * value[0]:.1f} ({value[1]})"


def format_row(row: Row) -> str:
    cells = [row.model, row.prompts, f"{row.guidance:g}", row.count]
    cells += [cell(row.shares.get(k)) for k in ("digit", "weight", "slant", "upright")]
    return " | ".join(map(str, [*cells, f"{row.ms_per_sample:.1f}"]))


def verdicts(rows: Sequence[Row]) -> list[str]:
    """The issue's floors, at each guidance."""
    lines = []
    for guidance in sorted({r.guidance for r in rows}):
        at = {r.prompts: r for r in rows if r.guidance == guidance and r.model == "prompts"}
        parts = []
        for name, floor in FLOORS.items():
            value = at[name].shares["digit"][0]
            parts.append(f"digit {100 * value:.1f}% on {name} ({'meets' if value >= floor else 'BELOW'} {floor:.0%})")
        for attribute in ("weight", "slant"):
            value = at["training-style"].shares[attribute][0]
            parts.append(
                f"{attribute} {100 * value:.1f}% training-style ({'meets' if value >= BINARY_FLOOR else 'BELOW'} "
                f"{BINARY_FLOOR:.0%})"
            )
        lines.append(f"- guidance {guidance:g}: " + "; ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint of experiment=image_prompts")
    parser.add_argument("--label-ckpt", type=Path, help="a class-label image checkpoint to compare on the digit")
    parser.add_argument("--per-prompt", type=int, default=4, help="samples per prompt (seeds 0..)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--classifier-epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="classifier seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if min(args.per_prompt, args.batch_size, args.classifier_epochs, args.threads) < 1:
        parser.error("--per-prompt, --batch-size, --classifier-epochs and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    from toolkit.module import load_module

    load_before, cpu = os.getloadavg()[0], time.process_time()
    with stopwatch() as total:
        module = load_module(args.ckpt)
        if module.domain.text_encoder is None:
            parser.error(f"{args.ckpt} was not trained with captions; train one with experiment=image_prompts")
        label_module = load_module(args.label_ckpt) if args.label_ckpt else None
        measures = Measures.build(args.classifier_epochs, args.seed)
        print(f"classifier: {100 * measures.classifier_accuracy:.1f}% on held-out real digits")
        sets = prompt_sets(Path(module.domain.root or CAPTIONED_DIGITS_ROOT))
        rows = run(module, label_module, measures, sets, args.per_prompt, args.guidance, args.batch_size)
    sampler = module.config["sampler"]
    body = [
        f"- Checkpoint: trained {torch.load(args.ckpt, weights_only=True).get('global_step', '?')} steps "
        f"({module.config['domain']['text_encoder']['kind']} text encoder); sampler {sampler['method']}, "
        f"{sampler['steps']} steps; {args.per_prompt} samples per prompt (seeds 0..), "
        f"{', '.join(f'{k}: {len(v)} prompts' for k, v in sets.items())}",
        f"- Judge: a CNN at {100 * measures.classifier_accuracy:.1f}% on held-out real digits; weight and slant "
        "against each digit's median over the real images (binary; chance 50%), upright: within the caption's "
        "middle third of shear (chance 33%)",
        f"- Run time: {total.seconds:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, {args.threads} thread(s); "
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}",
        "- Cells: share of the samples that name the attribute which pass, with that count in brackets",
        "",
        "## Against the issue's floors (digit >= 90% training-style, >= 70% held-out; each binary attribute >= 80%)",
        "",
        *verdicts(rows),
        "",
        "## All rows",
        "",
        *markdown_table(HEADER, [format_row(r).split(" | ") for r in rows]),
    ]
    path = write_results(
        args.out,
        "Prompts: adherence per attribute",
        reproduce_command(argv, "benchmarks/prompts.py", "runs/image/<time>/checkpoints/last.ckpt"),
        body,
    )
    print("\n".join(body))
    return path


if __name__ == "__main__":
    main()
