"""Prompt adherence: does a text-conditioned model draw what the prompt asks for?

Each sample is measured the way its caption was made, by a judge per domain (``JUDGES``):

- images (``experiment=image_prompts``; captions "a bold seven leaning right" from
  data/images/make_captioned_digits.py): the digit by a small CNN trained (seeded) on the real digits'
  training split; the weight by ink mass and the slant by the shear of the ink's moments, each a binary
  check against the median of real images of that digit; "upright" prompts pass within the caption's
  middle third of shear;
- audio (``experiment=audio_prompts``; captions "seven, spoken slowly in a high female voice" from
  data/audio/make_captions.py), on the log-mel spectrograms themselves: the word by a CNN trained (seeded)
  on the real clips' training split; the voice (male / female) by a second CNN; the pitch by the F0 a third
  CNN reads (trained on the clips' measured F0, the measure the captions' pitch thirds come from) against
  the median F0 of the prompt's voice (or, where the prompt names none, the voice read); the speed by the
  speech duration (frames within 45 dB of the loudest frame) against the median over the real clips of
  that word;
- point clouds (``experiment=pointcloud_prompts``; captions "a tall lamp with a wide shade" from the
  captioned procedural set, ``toolkit.domains.pointcloud.procedural_captions``): the shape by a small PointNet
  trained (seeded) on real clouds; height and width by the captions' own ratios from robust (1-99%) extents,
  each a binary check against the class median over the real clouds; the part by geometry.

The first row judges real data against its own captions: how far the judge agrees with the captions.
Prompt sets: training-style (one caption per attribute combination seen in training, in its training
wording), held-out combinations (the combinations kept out of training, in training wordings) and
paraphrases (wordings kept out of the captions, for seen combinations), each at every ``--guidance``.
A class-label model of the same domain (``--label-ckpt``) draws as many samples per class at the same
guidance: the digit or word is the one attribute both can express.

    python benchmarks/prompts.py --ckpt runs/image/<time>/checkpoints/last.ckpt \
        --label-ckpt runs/image/<label run>/checkpoints/last.ckpt

Writes the checkpoint's domain's section of benchmarks/results/prompts.md (``--out`` to change the
file); the other domains' sections are kept as they are.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import audio_quality  # noqa: E402
from benchmarks.common import (  # noqa: E402
    classify,
    fit_classifier,
    machine_description,
    markdown_table,
    reproduce_command,
    stopwatch,
)
from benchmarks.image_quality import Split, train_classifier  # noqa: E402
from toolkit.domains.audio import DEFAULT_ROOT as SPOKEN_DIGITS_ROOT  # noqa: E402
from toolkit.domains.audio import SUPPORTED_SUFFIXES, fit_length, load_audio  # noqa: E402
from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, read_captions, read_held_out  # noqa: E402
from toolkit.domains.data import scan_class_folders, split_indices  # noqa: E402
from toolkit.domains.image import CAPTIONED_DIGITS_ROOT, load_digits_images  # noqa: E402
from toolkit.domains.pointcloud import CAPTION_WORDS, PROCEDURAL_CLASSES  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prompts.md"
DOMAIN_ORDER = ("image", "audio", "pointcloud")  # the order of the sections in the results file
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


@dataclass
class Prompt:
    """A prompt and the attributes its caption was made from (as strings; "" = not named)."""

    text: str
    attributes: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.attributes[name]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompt_sets(root: Path, names: Sequence[str]) -> dict[str, list[Prompt]]:
    """The three sets over the attributes ``names``, each prompt once, in a fixed order. Paraphrases are
    kept for the combinations trained on (a combination no clip happens to have is not a paraphrase)."""

    def prompt(row: dict) -> Prompt:
        return Prompt(row["text"], {name: str(row[name]) for name in names})

    def unique(rows) -> list[Prompt]:
        seen: dict[str, Prompt] = {}
        for row in rows:
            seen.setdefault(row["text"], prompt(row))
        return sorted(seen.values(), key=lambda p: (*(p[n] for n in names), p.text))

    training: dict[tuple, dict] = {}
    for row in read_captions(root).values():
        training.setdefault(tuple(str(row[n]) for n in names), row)  # the first caption per combination
    return {
        "training-style": unique(training.values()),
        "held-out combinations": unique(read_jsonl(root / HELD_OUT_FILE)),
        "paraphrases": unique(
            row
            for row in read_jsonl(root / PARAPHRASES_FILE)
            if not row["held_out"] and tuple(str(row[n]) for n in names) in training
        ),
    }


def subsample(sets: dict[str, list[Prompt]], limit: int | None, seed: int = 0) -> dict[str, list[Prompt]]:
    """At most ``limit`` prompts of each set: a seeded random subset, kept in the set's order."""
    if limit is None:
        return sets
    rng = np.random.default_rng(seed)
    return {
        name: [prompts[i] for i in sorted(rng.choice(len(prompts), limit, replace=False))]
        if len(prompts) > limit
        else prompts
        for name, prompts in sets.items()
    }


def set_sizes(sets: dict[str, list[Prompt]], all_sets: dict[str, list[Prompt]]) -> str:
    """``training-style: 120 prompts of 240, ...``: the prompts drawn per set (and of how many)."""
    return ", ".join(
        f"{name}: {len(prompts)} prompts" + (f" of {len(all_sets[name])}" if len(prompts) < len(all_sets[name]) else "")
        for name, prompts in sets.items()
    )


def judged_share(values: list[bool]) -> tuple[float, int]:
    """The share of passes and the number judged."""
    return (statistics.mean(values) if values else float("nan"), len(values))


class DigitJudge:
    """Images: the digit by a CNN trained on the real digits' training split, weight by ink mass and
    slant by shear (the captions' own measures), each a binary check against the median of the real
    images of that digit; "upright" prompts pass within the caption's middle third of shear."""

    domain = "image"
    key = "digit"
    attributes = ("digit", "weight", "slant")
    binary = ("weight", "slant")
    columns = ("digit", "weight", "slant", "upright")
    checkpoint = "runs/image/<time>/checkpoints/last.ckpt"
    default_root = CAPTIONED_DIGITS_ROOT  # the prompt sets' folder when the domain's root is null

    def __init__(self, module, epochs: int, seed: int):
        script = caption_measures()
        self.ink_mass, self.shear = script.ink_mass, script.shear
        self.domain_ = module.domain
        images, labels = load_digits_images(script.RESOLUTION)
        pixels = np.rint(images[:, 0].numpy() * 255) / 255.0  # as the PNGs store them
        train, held_out = split_indices(len(labels), 0.1, seed)
        unit = torch.from_numpy(pixels).float()[:, None]
        self.classifier = train_classifier(Split(unit[train], labels[train]), 10, epochs=epochs, seed=seed)
        self.classifier_accuracy = float((self.read(pixels[held_out]) == labels[held_out].numpy()).mean())
        ink, slant, digits = self.ink_mass(pixels), self.shear(pixels), labels.numpy()
        self.ink_median = np.array([np.median(ink[digits == d]) for d in range(10)])
        self.shear_median = np.array([np.median(slant[digits == d]) for d in range(10)])
        self.shear_terciles = np.array([np.quantile(slant[digits == d], [1 / 3, 2 / 3]) for d in range(10)])
        self.root = Path(module.domain.root or self.default_root)
        self.real = self.real_with_captions(self.root)

    @staticmethod
    def real_with_captions(root: Path, count: int = 300) -> tuple[np.ndarray, list[Prompt]]:
        """The first ``count`` captioned real images (pixels) and their captions."""
        from PIL import Image

        rows = list(read_captions(root).items())[:count]
        pixels = np.stack([np.asarray(Image.open(Path(root) / name), dtype=np.float64) / 255 for name, _ in rows])
        return pixels, [Prompt(r["text"], {n: str(r[n]) for n in DigitJudge.attributes}) for _, r in rows]

    def read(self, pixels: np.ndarray) -> np.ndarray:
        """The digit the classifier reads in each of ``pixels`` [n, 16, 16]."""
        with torch.no_grad():
            return self.classifier(torch.from_numpy(pixels).float()[:, None]).argmax(1).numpy()

    def pixels(self, x: torch.Tensor) -> np.ndarray:
        return self.domain_.decode(x)[:, 0]

    def classes(self, x: torch.Tensor) -> np.ndarray:
        return self.read(self.pixels(x))

    def class_of(self, prompt: Prompt) -> int:
        return int(prompt["digit"])

    def judge(self, x: torch.Tensor, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        """Per attribute, one pass/fail per sample that names it (``x`` in model space)."""
        return self.judge_pixels(self.pixels(x), prompts)

    def judge_pixels(self, pixels: np.ndarray, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        read, ink, slant = self.read(pixels), self.ink_mass(pixels), self.shear(pixels)
        results: dict[str, list[bool]] = {name: [] for name in self.columns}
        for i, p in enumerate(prompts):
            digit = int(p["digit"])
            results["digit"].append(bool(read[i] == digit))
            if p["weight"]:
                results["weight"].append(bool((ink[i] > self.ink_median[digit]) == (p["weight"] == "bold")))
            if p["slant"] == "upright":
                low, high = self.shear_terciles[digit]
                results["upright"].append(bool(low <= slant[i] <= high))
            else:
                results["slant"].append(bool((slant[i] > self.shear_median[digit]) == (p["slant"] == "right")))
        return results

    def ceiling(self) -> dict[str, list[bool]]:
        """The judge on real images against their own captions."""
        return self.judge_pixels(*self.real)

    def description(self) -> str:
        return (
            f"a CNN at {100 * self.classifier_accuracy:.1f}% on held-out real digits reads the digit; weight (ink "
            "mass) and slant (shear) against each digit's median over the real images (binary; chance 50%); "
            "upright: within the caption's middle third of shear (chance 33%)"
        )


# --- point clouds -------------------------------------------------------------------------------

EXTENT_QUANTILE = 0.01  # extents from the 1-99% quantiles: a few stray points do not stretch a shape


def cloud_bounds(points: np.ndarray) -> np.ndarray:
    """Robust lower and upper bounds [2, 3] of a cloud [N, 3] (y up)."""
    return np.quantile(points, [EXTENT_QUANTILE, 1 - EXTENT_QUANTILE], axis=0)


def horizontal_distance(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Each point's distance from the vertical axis through ``centre`` (x, z)."""
    return np.linalg.norm(points[:, [0, 2]] - centre, axis=1)


def height_ratio(points: np.ndarray) -> float:
    """The captions' height: the cloud's height over its larger horizontal side."""
    low, high = cloud_bounds(points)
    extent = high - low
    return float(extent[1] / max(extent[0], extent[2]))


def width_ratio(points: np.ndarray, shape: str) -> float:
    """The captions' width: a lamp's shade diameter over its height (the radius that 95% of the upper
    half's points lie within, around the median axis); an airplane's span (z) over its length (x)."""
    low, high = cloud_bounds(points)
    if shape == "airplane":
        return float((high[2] - low[2]) / (high[0] - low[0]))
    if shape != "lamp":
        raise ValueError(f"only lamps and airplanes have a width in the captions, not {shape!r}")
    height = high[1] - low[1]
    upper = points[points[:, 1] >= low[1] + height / 2]
    radius = np.quantile(horizontal_distance(upper, np.median(points[:, [0, 2]], axis=0)), 0.95)
    return float(2 * radius / height)


def armrest_share(points: np.ndarray) -> float:
    """A chair's share of points above the seat (the densest height) away from the back: only armrests."""
    low, high = cloud_bounds(points)
    height = high[1] - low[1]
    counts, edges = np.histogram(points[:, 1], bins=30, range=(low[1], high[1]))
    above = points[points[:, 1] > edges[counts.argmax() + 1] + 0.075 * height]
    if len(above) == 0:
        return 0.0
    back = np.median(above[:, 2])
    return float(np.sum(np.abs(above[:, 2] - back) > 0.3 * (high[2] - low[2])) / len(points))


def leg_spread(points: np.ndarray) -> float:
    """A table's median distance from the axis between 20% and 70% of its height, over the top's radius:
    small for one central pole, near 1 for four legs at the corners."""
    low, high = cloud_bounds(points)
    height = high[1] - low[1]
    distance = horizontal_distance(points, np.median(points[:, [0, 2]], axis=0))
    band = (points[:, 1] > low[1] + 0.2 * height) & (points[:, 1] < low[1] + 0.7 * height)
    return float(np.median(distance[band]) / np.quantile(distance, 1 - EXTENT_QUANTILE)) if band.any() else 1.0


def engine_share(points: np.ndarray) -> float:
    """An airplane's share of points out on the wings (beyond 15% of the span from the middle) and
    below the wings' plane (their median height) by more than 2.5% of the span: only engines."""
    low, high = cloud_bounds(points)
    span = high[2] - low[2]
    outboard = np.abs(points[:, 2] - (low[2] + high[2]) / 2) > 0.15 * span
    if not outboard.any():
        return 0.0
    wings = np.median(points[outboard, 1])
    return float(np.mean(outboard & (points[:, 1] < wings - 0.025 * span)))


def handle_share(points: np.ndarray) -> float:
    """A mug's share of points beyond 1.1 body radii from its axis (the handle sticks out along x; the
    body's radius is half its depth along z, its axis that radius in from the far side)."""
    low, high = cloud_bounds(points)
    radius = (high[2] - low[2]) / 2
    centre = np.array([low[0] + radius, (low[2] + high[2]) / 2])
    return float(np.mean(horizontal_distance(points, centre) > 1.1 * radius))


# shape -> (the part named when the measure passes its threshold, otherwise, measure, threshold, below)
PART_MEASURES = {
    "chair": ("armrests", "no armrests", armrest_share, 0.01, False),
    "table": ("round", "four legs", leg_spread, 0.45, True),
    "airplane": ("engines", "no engines", engine_share, 0.01, False),
    "mug": ("handle", "no handle", handle_share, 0.005, False),
}


def shape_part(points: np.ndarray, shape: str) -> str:
    """The part a cloud of ``shape`` shows, in the captions' words ("" for a lamp, which has none)."""
    if shape not in PART_MEASURES:
        return ""
    named, other, measure, threshold, below = PART_MEASURES[shape]
    value = measure(points)
    return named if (value < threshold if below else value > threshold) else other


class PointClassifier(nn.Module):
    """A small PointNet: a shared per-point MLP, max and mean pooled, then a linear head."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        self.per_point = nn.Sequential(
            nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 2 * width)
        )
        self.mix = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def features(self, points: torch.Tensor) -> torch.Tensor:
        per_point = self.per_point(points)
        return self.mix(torch.cat([per_point.amax(dim=1), per_point.mean(dim=1)], dim=1))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(points))


def jitter_points(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: 0.01 Gaussian noise per coordinate, so that fuzzy samples read as shapes."""
    return points + 0.01 * torch.randn(points.shape, generator=generator)


class PointCloudJudge:
    """Point clouds: the shape class by a PointNet trained (seeded) on real clouds of the captioned
    procedural set; height and width measured as the captions measured the meshes (robust 1-99% extents)
    and each a binary check against the class median over the real clouds; the part by geometry (chair
    armrests above the seat, table pole or legs, engines below the wings, mug handle beyond the body)."""

    domain = "pointcloud"
    key = "shape"
    attributes = ("shape", "height", "width", "part")
    binary = ("height", "width", "part")
    columns = attributes
    checkpoint = "runs/pointcloud/<time>/checkpoints/last.ckpt"
    class_names = PROCEDURAL_CLASSES  # the label model's classes, in its (sorted folder) order
    held_out_fraction = 0.2  # of the real clouds, kept from the classifier: the ceiling is judged on them

    def __init__(self, module, epochs: int, seed: int):
        domain = module.domain
        self.root = domain.source_dir()
        rows = {**read_captions(self.root), **read_held_out(self.root)}
        missing = [name for name in self.attributes if any(name not in row for row in rows.values())]
        if missing:
            raise ValueError(
                f"{self.root}: captions lack the column(s) {missing}; this judge needs the captioned procedural set "
                "(domain.source=procedural_captioned), whose captions name shape, height, width and part"
            )
        names = sorted(rows)
        self.prompts = [Prompt(rows[n]["text"], {a: str(rows[n][a]) for a in self.attributes}) for n in names]
        self.points = domain.normalise(np.stack([domain.read_cloud(self.root, self.root / n) for n in names]))
        labels = torch.tensor([self.class_of(p) for p in self.prompts])
        train, held_out = split_indices(len(labels), self.held_out_fraction, seed, labels)
        inputs = torch.from_numpy(self.points).float()
        model = PointClassifier(len(self.class_names))
        self.classifier = fit_classifier(model, inputs[train], labels[train], epochs, 32, 3e-3, seed, jitter_points)
        self.classifier_accuracy = float((self.read(inputs[held_out]) == labels[held_out].numpy()).mean())
        shapes = np.array([p["shape"] for p in self.prompts])
        self.medians = {
            (name, shape): float(np.median([measure(c) for c in self.points[shapes == shape]]))
            for shape in self.class_names
            for name, measure in self.measures(shape).items()
        }
        self.real = (self.points[held_out.numpy()], [self.prompts[i] for i in held_out.tolist()])

    @staticmethod
    def measures(shape: str) -> dict:
        """The binary proportions a caption of ``shape`` may name, each as a function of a cloud."""
        found = {} if shape == "airplane" else {"height": height_ratio}
        if shape in ("lamp", "airplane"):
            found["width"] = lambda points: width_ratio(points, shape)
        return found

    def read(self, inputs: torch.Tensor) -> np.ndarray:
        return classify(self.classifier, inputs.float())[0]

    def classes(self, x: torch.Tensor) -> np.ndarray:
        """The class index (in ``class_names`` order) the classifier reads in each cloud of ``x``."""
        return self.read(x.detach().cpu())

    def class_of(self, prompt: Prompt) -> int:
        if prompt["shape"] not in self.class_names:
            raise ValueError(f"unknown shape {prompt['shape']!r} in {prompt.text!r}; known: {self.class_names}")
        return self.class_names.index(prompt["shape"])

    def judge(self, x: torch.Tensor, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        """Per attribute, one pass/fail per sample that names it (``x`` in model space; every measure is a
        ratio of lengths, so any normalisation's frame serves)."""
        return self.judge_points(x.detach().cpu().double().numpy(), prompts)

    def judge_points(self, points: np.ndarray, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        read = self.read(torch.from_numpy(np.asarray(points)))
        results: dict[str, list[bool]] = {name: [] for name in self.columns}
        words = {"height": CAPTION_WORDS["height"][1], "width": CAPTION_WORDS["width"][1]}
        for cloud, classified, p in zip(points, read, prompts, strict=True):
            shape = p["shape"]
            results["shape"].append(bool(classified == self.class_of(p)))
            for name, measure in self.measures(shape).items():
                if p[name]:
                    results[name].append(bool((measure(cloud) > self.medians[name, shape]) == (p[name] == words[name])))
            if p["part"]:
                results["part"].append(shape_part(cloud, shape) == p["part"])
        return results

    def ceiling(self) -> dict[str, list[bool]]:
        """The judge on the real clouds the classifier did not train on, against their own captions."""
        return self.judge_points(*self.real)

    def description(self) -> str:
        return (
            f"a PointNet at {100 * self.classifier_accuracy:.1f}% on held-out real clouds reads the shape; height "
            "(height over the larger horizontal side) and width (lamp shade diameter over height, airplane span "
            "over length), from 1-99% extents, against each class's median over the real clouds (binary; chance "
            "50%); part by geometry (armrests above the seat, one pole or four legs, engines below the wings, a "
            "handle beyond the mug's body)"
        )


def speech_ms(x: torch.Tensor, domain, floor_db: float) -> np.ndarray:
    """The speech duration (ms) of each log-mel of ``x`` [n, 1, n_mels, frames] (model space, clipped to
    [-1, 1] as the domain reads it): the frames whose mel power lies within ``floor_db`` of the loudest
    frame of that clip, times the hop."""
    power = domain.mel_power(x).sum(dim=1)
    level = 10 * torch.log10(power)
    speech = level > level.amax(dim=1, keepdim=True) - floor_db
    return speech.sum(dim=1).numpy() * 1000 * domain.hop_length / domain.sample_rate


@torch.no_grad()
def probabilities(classifier: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Softmax of ``classifier`` over ``x`` in batches, [n, classes]."""
    return torch.cat([classifier(chunk).softmax(dim=1) for chunk in x.split(batch_size)]).numpy()


class AudioJudge:
    """Audio, on the log-mel spectrograms (model space): the word by a CNN trained on the real clips'
    training split; the voice (male / female) by a second CNN trained on the same clips; the pitch by the
    F0 a third CNN reads (trained on the clips' measured ``f0_hz`` in bins of 2 semitones, read as the
    expected log F0) against the median F0 of the voice: the voice the prompt names, else the one the
    voice CNN reads (the captions' pitch thirds were cut per voice, so the same 120 Hz is high for a man
    and low for a woman); speed by the speech duration against the median duration of the real clips of
    that word (the captions cut thirds of it per word). The ceiling row judges the judge's held-out real
    clips against their own captions."""

    domain = "audio"
    key = "word"
    attributes = ("word", "voice", "pitch", "speed")
    binary = ("voice", "pitch", "speed")
    columns = ("word", "voice", "pitch", "speed")
    checkpoint = "runs/audio/<time>/checkpoints/last.ckpt"
    default_root = SPOKEN_DIGITS_ROOT
    voices = ("male", "female")
    f0_bin_edges_hz = 40.0 * 2 ** (np.arange(21) / 6)  # 40-400 Hz in 20 bins of 2 semitones
    held_out_fraction = 0.25
    speech_floor_db = 45.0  # as the clips' trimming (data/audio/README.md)

    def __init__(self, module, epochs: int, seed: int):
        self.domain_ = module.domain
        self.root = root = Path(module.domain.root or self.default_root)
        self.class_names = scan_class_folders(root, SUPPORTED_SUFFIXES, True, what="audio files")[2]
        rows = {**read_captions(root), **read_held_out(root)}
        names = sorted(rows)
        x = self.encode_files(root, names)
        prompts = [Prompt(rows[n]["text"], {a: str(rows[n][a]) for a in self.attributes}) for n in names]
        words = torch.tensor([self.class_of(p) for p in prompts])
        voice, f0 = self.voices_and_f0(rows, names)
        self.median_f0 = {name: float(np.median(f0[voice == v])) for v, name in enumerate(self.voices)}
        train, held_out = split_indices(len(names), self.held_out_fraction, seed, labels=words)
        fit = audio_quality.train_classifier
        self.word_classifier = fit(x[train], words[train], len(self.class_names), epochs, seed=seed)
        self.voice_classifier = fit(x[train], torch.from_numpy(voice)[train], len(self.voices), epochs, seed=seed)
        f0_bins = torch.from_numpy(self.f0_bin(f0))
        self.f0_classifier = fit(x[train], f0_bins[train], len(self.f0_bin_edges_hz) - 1, epochs, seed=seed)
        durations = speech_ms(x, self.domain_, self.speech_floor_db)
        word_of = np.array([p["word"] for p in prompts])
        self.median_ms = {word: float(np.median(durations[word_of == word])) for word in set(word_of)}
        self.real = (x[held_out], [prompts[i] for i in held_out.tolist()])
        read_f0, truth = self.read_f0(x[held_out]), f0[held_out.numpy()]
        voice_median = np.array([self.median_f0[self.voices[v]] for v in voice[held_out.numpy()]])
        above, read_above = truth > voice_median, read_f0 > voice_median
        self.accuracy = {
            "word": float((self.classes(x[held_out]) == words[held_out].numpy()).mean()),
            "voice": float((self.read_voice(x[held_out]) == voice[held_out.numpy()]).mean()),
            "F0 side": float((read_above == above).mean()),
            "F0 error (semitones)": float(np.median(np.abs(12 * np.log2(read_f0 / truth)))),
        }

    @classmethod
    def voices_and_f0(cls, rows: dict[str, dict], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per clip: its voice (0 male, 1 female; ``clip_voice``: ``voice`` is what the caption names, ""
        where it names none) and its measured F0 in Hz."""
        if any("f0_hz" not in rows[n] or "clip_voice" not in rows[n] for n in names):
            raise ValueError(
                "the captions have no f0_hz or clip_voice column; rebuild them with data/audio/make_captions.py"
            )
        voice = np.array([cls.voices.index(rows[n]["clip_voice"]) for n in names])
        return voice, np.array([float(rows[n]["f0_hz"]) for n in names])

    @classmethod
    def f0_bin(cls, f0_hz: np.ndarray) -> np.ndarray:
        """The bin of ``f0_bin_edges_hz`` each F0 falls in (out-of-range values in the end bins)."""
        return np.clip(np.searchsorted(cls.f0_bin_edges_hz, f0_hz) - 1, 0, len(cls.f0_bin_edges_hz) - 2)

    def read_voice(self, x: torch.Tensor) -> np.ndarray:
        """The voice (0 male, 1 female) the voice classifier reads in each log-mel."""
        return probabilities(self.voice_classifier, x.clamp(-1, 1)).argmax(axis=1)

    def read_f0(self, x: torch.Tensor) -> np.ndarray:
        """The F0 (Hz) the F0 classifier reads in each log-mel: its expected log F0 over the bins' centres."""
        edges = np.log(self.f0_bin_edges_hz)
        centres = (edges[:-1] + edges[1:]) / 2
        return np.exp(probabilities(self.f0_classifier, x.clamp(-1, 1)) @ centres)

    def encode_files(self, root: Path, names: Sequence[str]) -> torch.Tensor:
        """The clips ``names`` under ``root`` as the domain's log-mels [n, 1, n_mels, frames]."""
        domain = self.domain_
        waves = [
            fit_length(torch.from_numpy(load_audio(root / n, domain.sample_rate)), domain.clip_samples) for n in names
        ]
        return torch.cat([domain.encode(chunk) for chunk in torch.stack(waves).split(64)])

    def classes(self, x: torch.Tensor) -> np.ndarray:
        """The word the classifier reads in each log-mel, as the index of its class folder (the label model's)."""
        return probabilities(self.word_classifier, x.clamp(-1, 1)).argmax(axis=1)

    def class_of(self, prompt: Prompt) -> int:
        return self.class_names.index(prompt["word"])

    def judge(self, x: torch.Tensor, prompts: Sequence[Prompt]) -> dict[str, list[bool]]:
        """Per attribute, one pass/fail per sample that names it (``x`` in model space)."""
        words, voices, f0 = self.classes(x), self.read_voice(x), self.read_f0(x)
        durations = speech_ms(x, self.domain_, self.speech_floor_db)
        results: dict[str, list[bool]] = {name: [] for name in self.columns}
        for i, p in enumerate(prompts):
            results["word"].append(bool(words[i] == self.class_of(p)))
            if p["voice"]:
                results["voice"].append(bool(self.voices[voices[i]] == p["voice"]))
            if p["pitch"]:
                median = self.median_f0[p["voice"] or self.voices[voices[i]]]
                results["pitch"].append(bool((f0[i] > median) == (p["pitch"] == "high")))
            if p["speed"]:
                median = self.median_ms[p["word"]]
                results["speed"].append(bool(durations[i] < median if p["speed"] == "fast" else durations[i] > median))
        return results

    def ceiling(self) -> dict[str, list[bool]]:
        """The judge on its held-out real clips against their own captions."""
        return self.judge(*self.real)

    def description(self) -> str:
        accuracy = self.accuracy
        return (
            f"on {len(self.real[1])} held-out real clips, a CNN reads the word at {100 * accuracy['word']:.1f}%, "
            f"a second one the voice at {100 * accuracy['voice']:.1f}% and a third one the F0 (median error "
            f"{accuracy['F0 error (semitones)']:.1f} semitones; the side of the voice's median F0 right for "
            f"{100 * accuracy['F0 side']:.1f}%); pitch passes when that F0 lies on the side the prompt names of "
            f"the median F0 of the prompt's voice, or where it names none, the voice read (male "
            f"{self.median_f0['male']:.0f} Hz, female {self.median_f0['female']:.0f} Hz; binary; chance 50%); "
            f"speed by the speech duration (frames within {self.speech_floor_db:g} dB of the loudest) against the "
            "word's median over the real clips (binary; chance 50%)"
        )


JUDGES = {judge.domain: judge for judge in (DigitJudge, AudioJudge, PointCloudJudge)}


@dataclass
class Row:
    model: str
    prompts: str
    guidance: float
    count: int
    shares: dict[str, tuple[float, int]]  # attribute -> (share passed, samples judged)
    ms_per_sample: float


def draw(module, prompts: Sequence[str] | None, labels, n: int, guidance: float, batch_size: int):
    """Samples 0..n-1 (seeds 0..n-1) in model space, and the milliseconds a sample took."""
    started = time.perf_counter()
    out = module.generate(n, seed=0, prompt=prompts, labels=labels, guidance=guidance, batch_size=batch_size)
    return out["x"], 1000 * (time.perf_counter() - started) / n


def shares(judged: dict[str, list[bool]]) -> dict[str, tuple[float, int]]:
    return {k: judged_share(v) for k, v in judged.items()}


def run(module, label_module, judge, sets, per_prompt: int, guidances, batch_size: int, log=print) -> list[Row]:
    """The judge on real data, then every prompt set at every guidance and the class-label model on as
    many samples per class."""
    rows = [
        Row("real data", "their own captions", float("nan"), len(judge.real[1]), shares(judge.ceiling()), float("nan"))
    ]
    log(format_row(rows[-1], judge.columns))
    for guidance in guidances:
        for name in PROMPT_SETS:
            prompts = [p for p in sets[name] for _ in range(per_prompt)]
            x, ms = draw(module, [p.text for p in prompts], None, len(prompts), guidance, batch_size)
            rows.append(Row("prompts", name, guidance, len(prompts), shares(judge.judge(x, prompts)), ms))
            log(format_row(rows[-1], judge.columns))
        if label_module is not None:
            classes = label_module.domain.num_classes
            n = -(-len(sets["training-style"]) * per_prompt // classes) * classes  # as many as training-style
            labels = torch.arange(n) % classes
            x, ms = draw(label_module, None, labels, n, guidance, batch_size)
            judged = {judge.key: (judge.classes(x) == labels.numpy()).tolist()}
            rows.append(Row("class labels", f"the {judge.key}'s label", guidance, n, shares(judged), ms))
            log(format_row(rows[-1], judge.columns))
    return rows


def cell(value: tuple[float, int] | None) -> str:
    if value is None or value[1] == 0:
        return "-"
    return f"{100 * value[0]:.1f} ({value[1]})"


def format_row(row: Row, columns: Sequence[str]) -> str:
    guidance = "-" if math.isnan(row.guidance) else f"{row.guidance:g}"
    cells = [row.model, row.prompts, guidance, row.count, *(cell(row.shares.get(k)) for k in columns)]
    ms = "-" if math.isnan(row.ms_per_sample) else f"{row.ms_per_sample:.1f}"  # real data: nothing drawn
    return " | ".join(map(str, [*cells, ms]))


def verdicts(rows: Sequence[Row], judge, default_guidance: float | None = None) -> list[str]:
    """The issue's floors, at each guidance (``default_guidance``, the checkpoint's own, marked)."""
    lines = []
    for guidance in sorted({r.guidance for r in rows if r.model == "prompts"}):
        at = {r.prompts: r for r in rows if r.guidance == guidance and r.model == "prompts"}
        parts = []
        for name, floor in FLOORS.items():
            value = at[name].shares[judge.key][0]
            parts.append(
                f"{judge.key} {100 * value:.1f}% on {name} ({'meets' if value >= floor else 'BELOW'} {floor:.0%})"
            )
        for attribute in judge.binary:
            value = at["training-style"].shares[attribute][0]
            parts.append(
                f"{attribute} {100 * value:.1f}% training-style ({'meets' if value >= BINARY_FLOOR else 'BELOW'} "
                f"{BINARY_FLOOR:.0%})"
            )
        mark = " (the checkpoint's default)" if guidance == default_guidance else ""
        lines.append(f"- guidance {guidance:g}{mark}: " + "; ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint of experiment=<domain>_prompts")
    parser.add_argument("--label-ckpt", type=Path, help="a class-label checkpoint of the same domain to compare with")
    parser.add_argument("--per-prompt", type=int, default=4, help="samples per prompt (seeds 0..)")
    parser.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        help="guidance scales to draw at (default: 1, 2, 4 and the checkpoint's own sampler.guidance)",
    )
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--classifier-epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="classifier seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-prompts", type=int, help="at most this many prompts per set (a seeded random subset); default: all"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results file (default: benchmarks/results/prompts.md); only the domain's section is replaced",
    )
    args = parser.parse_args(argv)
    if min(args.per_prompt, args.batch_size, args.classifier_epochs, args.threads, args.max_prompts or 1) < 1:
        parser.error("--per-prompt, --batch-size, --classifier-epochs, --threads and --max-prompts must be >= 1")
    torch.set_num_threads(args.threads)
    from toolkit.module import load_module

    load_before, cpu = os.getloadavg()[0], time.process_time()
    with stopwatch() as total:
        module = load_module(args.ckpt)
        if module.domain.text_encoder is None:
            parser.error(f"{args.ckpt} was not trained with captions; train one with experiment=<domain>_prompts")
        if module.domain.name not in JUDGES:
            parser.error(f"no judge for the {module.domain.name} domain yet; choose one of {sorted(JUDGES)}")
        judge_class = JUDGES[module.domain.name]
        label_module = load_module(args.label_ckpt) if args.label_ckpt else None
        if label_module is not None and label_module.domain.name != module.domain.name:
            parser.error(f"--label-ckpt is a {label_module.domain.name} model; give a {module.domain.name} one")
        judge = judge_class(module, args.classifier_epochs, args.seed)
        print(judge.description())
        all_sets = prompt_sets(judge.root, judge.attributes)
        sets = subsample(all_sets, args.max_prompts, args.seed)
        default_guidance = float(module.config["sampler"].get("guidance") or 1.0)
        guidances = args.guidance or sorted({1.0, 2.0, 4.0, default_guidance})
        rows = run(module, label_module, judge, sets, args.per_prompt, guidances, args.batch_size)
    sampler = module.config["sampler"]
    header = ["model", "prompts", "guidance", "samples", *(f"{c} %" for c in judge.columns), "ms / sample"]
    floors = f"{judge.key} >= 90% training-style, >= 70% held-out; each binary attribute >= 80%"
    body = [
        f"- Checkpoint: trained {torch.load(args.ckpt, weights_only=True).get('global_step', '?')} steps "
        f"({module.config['domain']['text_encoder']['kind']} text encoder); sampler {sampler['method']}, "
        f"{sampler['steps']} steps; {args.per_prompt} samples per prompt (seeds 0..), "
        f"{set_sizes(sets, all_sets)}",
        f"- Judge: {judge.description()}; the first row is the judge on real data against its own captions",
        f"- Run time: {total.seconds:.0f} s wall, {time.process_time() - cpu:.0f} s CPU, {args.threads} thread(s); "
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}",
        "- Cells: share of the samples that name the attribute which pass, with that count in brackets",
        "",
        f"### Against the issue's floors ({floors})",
        "",
        *verdicts(rows, judge, default_guidance),
        "",
        "### All rows",
        "",
        *markdown_table(header, [format_row(r, judge.columns).split(" | ") for r in rows]),
    ]
    command = reproduce_command(argv, "benchmarks/prompts.py", judge_class.checkpoint)
    path = write_section(args.out or DEFAULT_OUT, module.domain.name, command, body)
    print("\n".join(body))
    return path


SECTION_START, SECTION_END = "<!-- section: {} -->", "<!-- end of section: {} -->"


def sections(text: str) -> dict[str, str]:
    """The domain sections of a results file, by domain (each with its markers)."""
    found = {}
    for domain in DOMAIN_ORDER:
        start, end = SECTION_START.format(domain), SECTION_END.format(domain)
        if start in text and end in text:
            found[domain] = text[text.index(start) : text.index(end) + len(end)]
    return found


def write_section(path: Path, domain: str, command: str, body: Sequence[str]) -> Path:
    """Write ``domain``'s section (its own date, machine and reproduce command, then ``body``) into the
    results file at ``path``, keeping the sections of the other domains, in ``DOMAIN_ORDER``."""
    path = Path(path)
    kept = sections(path.read_text()) if path.exists() else {}
    section = [
        SECTION_START.format(domain),
        f"## {domain}",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine_description()}",
        f"- Reproduce: `{command}`",
        *body,
        SECTION_END.format(domain),
    ]
    kept[domain] = "\n".join(section)
    intro = (
        "Prompt adherence per attribute, one section per domain (written by benchmarks/prompts.py, whose "
        "docstring says how each judge measures). Each section gives the issue's floors, then every row."
    )
    parts = ["# Prompts: adherence per attribute", intro, *(kept[d] for d in DOMAIN_ORDER if d in kept)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    return path


if __name__ == "__main__":
    main()
