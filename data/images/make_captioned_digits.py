"""Rebuild data/images/captioned_digits: scikit-learn's 1,797 digits as 16x16 PNGs with captions.

    python data/images/make_captioned_digits.py [--out data/images/captioned_digits]

Each caption names the digit and two stroke attributes measured on the PNG itself (see README.md):
the weight (ink mass, bold / thin by tercile within the digit, the middle third unnamed) and the
slant (the shear of the second moments, leaning left / upright / leaning right by tercile within the
digit). Attribute combinations in ``HELD_OUT`` are kept out of metadata.jsonl (held_out.jsonl lists
their files); the wordings of ``PARAPHRASES`` are kept out of the captions (paraphrases.jsonl).
Deterministic: the same scikit-learn data give the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, write_jsonl
from toolkit.domains.image import load_digits_images

RESOLUTION = 16
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = ("thin", "", "bold")  # lowest, middle, highest tercile of ink mass
SLANTS = ("left", "upright", "right")  # lowest, middle, highest tercile of shear
# Training wordings: each image gets one, in turn.
TEMPLATES = (
    "{a} {weight}{digit} {slant_phrase}",  # a bold seven leaning right
    "{a} {weight}{slant_adjective} {digit}",  # a bold right-leaning seven
    "the digit {digit}, {weight_and}{slant_phrase}",  # the digit seven, bold and leaning right
)
SLANT_PHRASES = {"left": "leaning left", "upright": "standing upright", "right": "leaning right"}
SLANT_ADJECTIVES = {"left": "left-leaning", "upright": "upright", "right": "right-leaning"}
# Wordings kept out of the captions, for measuring prompts in a user's own words.
PARAPHRASES = (
    "the number {numeral}{weight_strokes}, {slant_tilt}",  # the number 7 in heavy strokes, tilted to the right
    "a handwritten {digit} that {slant_verb}{weight_drawn}",  # a handwritten seven that slants right, drawn heavily
)
WEIGHT_STROKES = {"bold": " in heavy strokes", "thin": " in light strokes", "": ""}
WEIGHT_DRAWN = {"bold": ", drawn heavily", "thin": ", drawn lightly", "": ""}
SLANT_TILTS = {"left": "tilted to the left", "upright": "standing straight", "right": "tilted to the right"}
SLANT_VERBS = {"left": "slants left", "upright": "stands straight", "right": "slants right"}


def held_out(digit: int) -> dict:
    """The (weight, slant) combination of ``digit`` kept out of training: both attributes named,
    alternating so that every weight and slant is held out with some digits and seen with others."""
    return {"digit": digit, "weight": ("bold", "thin")[digit % 2], "slant": ("right", "left")[digit // 2 % 2]}


def ink_mass(pixels: np.ndarray) -> np.ndarray:
    """Sum of the pixel values in [0, 1] of images ``[n, H, W]`` (white ink on black)."""
    return pixels.sum(axis=(1, 2))


def shear(pixels: np.ndarray) -> np.ndarray:
    """Slant of images ``[n, H, W]``: -mu11 / mu02 of the ink's second central moments, i.e. the
    horizontal shift of the ink per row upwards (> 0 leans right)."""
    rows, cols = np.mgrid[0 : pixels.shape[1], 0 : pixels.shape[2]]
    mass = pixels.sum(axis=(1, 2))
    col_mean = (pixels * cols).sum(axis=(1, 2)) / mass
    row_mean = (pixels * rows).sum(axis=(1, 2)) / mass
    dc, dr = cols - col_mean[:, None, None], rows - row_mean[:, None, None]
    return -(pixels * dc * dr).sum(axis=(1, 2)) / (pixels * dr**2).sum(axis=(1, 2))


def terciles(values: np.ndarray, digits: np.ndarray) -> dict[int, list[float]]:
    """Per digit, the values splitting ``values`` into thirds."""
    return {d: np.quantile(values[digits == d], [1 / 3, 2 / 3]).tolist() for d in range(10)}


def tercile(value: float, bounds: list[float], words: tuple[str, str, str]) -> str:
    return words[0] if value < bounds[0] else words[2] if value > bounds[1] else words[1]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def slots(digit: int, weight: str, slant: str) -> dict:
    """The fill-ins of every template for one attribute combination."""
    return {
        "digit": WORDS[digit],
        "numeral": str(digit),
        "weight": f"{weight} " if weight else "",
        "weight_and": f"{weight} and " if weight else "",
        "slant_phrase": SLANT_PHRASES[slant],
        "slant_adjective": SLANT_ADJECTIVES[slant],
        "weight_strokes": WEIGHT_STROKES[weight],
        "weight_drawn": WEIGHT_DRAWN[weight],
        "slant_tilt": SLANT_TILTS[slant],
        "slant_verb": SLANT_VERBS[slant],
    }


def fill(template: str, values: dict) -> str:
    """The template's text; a leading ``{a}`` becomes the article of the word after it."""
    if template.startswith("{a} "):
        rest = template.removeprefix("{a} ").format(**values)
        return f"{article(rest)} {rest}"
    return template.format(**values)


def build(out: Path) -> None:
    images, labels = load_digits_images(RESOLUTION)
    pixels = np.rint(images[:, 0].numpy() * 255).astype(np.uint8)
    unit = pixels.astype(np.float64) / 255.0
    digits = labels.numpy()
    ink, slant = ink_mass(unit), shear(unit)
    ink_bounds, slant_bounds = terciles(ink, digits), terciles(slant, digits)

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    captioned, withheld = [], []
    for i, (picture, digit) in enumerate(zip(pixels, digits.tolist(), strict=True)):
        name = f"{i:04d}.png"
        Image.fromarray(picture, mode="L").save(out / name, optimize=True)
        weight = tercile(ink[i], ink_bounds[digit], WEIGHTS)
        slant_word = tercile(slant[i], slant_bounds[digit], SLANTS)
        attributes = {"digit": digit, "weight": weight, "slant": slant_word}
        text = fill(TEMPLATES[i % len(TEMPLATES)], slots(digit, weight, slant_word))
        row = {
            "file_name": name,
            "text": text,
            **attributes,
            "ink_mass": round(float(ink[i]), 4),
            "shear": round(float(slant[i]), 4),
        }
        (withheld if attributes == held_out(digit) else captioned).append(row)
    write_jsonl(out / "metadata.jsonl", captioned)
    write_jsonl(out / HELD_OUT_FILE, withheld)

    paraphrases = []
    for digit in range(10):
        for weight in WEIGHTS:
            for slant_word in SLANTS:
                attributes = {"digit": digit, "weight": weight, "slant": slant_word}
                for template in PARAPHRASES:
                    text = fill(template, slots(digit, weight, slant_word))
                    paraphrases.append({"text": text, **attributes, "held_out": attributes == held_out(digit)})
    write_jsonl(out / PARAPHRASES_FILE, paraphrases)
    measures = {
        "ink_mass": "sum of pixel values in [0, 1] of the 16x16 PNG; per digit: [thin below, bold above]",
        "shear": "-mu11/mu02 of the ink's second central moments (> 0 leans right); per digit: [left below, "
        "right above], upright between",
        "weight_terciles": {str(d): ink_bounds[d] for d in range(10)},
        "slant_terciles": {str(d): slant_bounds[d] for d in range(10)},
        "held_out": [held_out(d) for d in range(10)],
    }
    (out / "attributes.json").write_text(json.dumps(measures, indent=1) + "\n")
    print(f"{len(captioned)} captioned, {len(withheld)} held out, {len(paraphrases)} paraphrases -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "captioned_digits")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
