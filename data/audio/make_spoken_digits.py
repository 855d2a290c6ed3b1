"""Rebuild the embedded spoken-digit data set from scratch, offline, with espeak-ng.

Each clip is one English digit word ("zero" .. "nine") spoken by espeak-ng with a seeded
random choice of accent voice, voice variant, speaking rate, pitch and level. Clips are
resampled to 16 kHz mono, trimmed of leading and trailing silence and padded with digital
silence to exactly 1 s (settings whose word would not fit are re-drawn, so no word is cut),
then stored as 16-bit FLAC in one sub-folder per class, next to a CSV manifest of the
synthesis settings of every file.

    python data/audio/make_spoken_digits.py                  # the shipped data set
    python data/audio/make_spoken_digits.py --per-class 20 --out /tmp/digits

Needs the `espeak-ng` program (Debian/Ubuntu: `apt-get install espeak-ng`).
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
]
VARIANTS = [f"m{i}" for i in range(1, 9)] + [f"f{i}" for i in range(1, 6)]
VARIANTS += ["Alex", "Andrea", "Annie", "aunty", "belinda", "david", "linda", "max", "steph", "grandma"]
SPEED_WPM = (120, 210)
PITCH = (20, 80)
PEAK_DBFS = (-9.0, -3.0)

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
ONSET_THRESHOLD_DB = -45.0
ONSET_WINDOW = 80
PRE_ROLL = 160
POST_ROLL = 160
MAX_SPEECH_SAMPLES = 15200
FADE_SAMPLES = 160
MAX_ATTEMPTS = 20

DEFAULT_OUT = Path(__file__).resolve().parent / "spoken_digits"


@dataclass(frozen=True)
class Utterance:
    """The synthesis settings of one clip."""

    word: str
    accent: str
    variant: str
    speed_wpm: int
    pitch: int
    peak_dbfs: float

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def require_espeak() -> str:
    """Path of espeak-ng, or exit with a message saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        sys.exit(
            "error: the program 'espeak-ng' was not found on PATH; it synthesises the digits.\n"
            "Install it (Debian/Ubuntu: `apt-get install espeak-ng`, macOS: `brew install espeak-ng`) "
            "and run this script again."
        )
    return path


def synthesize(espeak: str, utt: Utterance) -> tuple[np.ndarray, int]:
    """Run espeak-ng and return its waveform (float64 mono) and sample rate."""
    result = subprocess.run(
        [espeak, "-v", utt.voice, "-s", str(utt.speed_wpm), "-p", str(utt.pitch), "--stdout", utt.word],
        capture_output=True,
        check=True,
    )
    wave, rate = sf.read(io.BytesIO(result.stdout), dtype="float64")
    return wave, rate


def speech_bounds(wave: np.ndarray) -> tuple[int, int]:
    """First and last sample of the region louder than ONSET_THRESHOLD_DB below the peak,
    measured as RMS over short windows so that single clicks do not count."""
    n_windows = len(wave) // ONSET_WINDOW
    frames = wave[: n_windows * ONSET_WINDOW].reshape(n_windows, ONSET_WINDOW)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (ONSET_THRESHOLD_DB / 20))
    return int(loud[0]) * ONSET_WINDOW, int(loud[-1] + 1) * ONSET_WINDOW


def to_clip(wave: np.ndarray, rate: int, peak_dbfs: float) -> tuple[np.ndarray, int]:
    """Resample to 16 kHz, drop leading and trailing silence (keeping 10 ms either side and
    fading out the tail), fix the length to 1 s with digital silence and scale to the peak
    level. Returns the clip and its speech length in samples."""
    wave16 = AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    start, end = speech_bounds(wave16)
    start = max(0, start - PRE_ROLL)
    speech = wave16[start : end + POST_ROLL][:CLIP_SAMPLES]
    fade = min(FADE_SAMPLES, len(speech))
    speech[-fade:] *= np.hanning(2 * fade)[fade:]
    clip = np.zeros(CLIP_SAMPLES)
    clip[: len(speech)] = speech
    clip *= 10 ** (peak_dbfs / 20) / np.abs(clip).max()
    return clip.astype(np.float32), end - start


def draw_utterance(rng: random.Random, word: str) -> Utterance:
    return Utterance(
        word=word,
        accent=rng.choice(ACCENTS),
        variant=rng.choice(VARIANTS),
        speed_wpm=rng.randint(*SPEED_WPM),
        pitch=rng.randint(*PITCH),
        peak_dbfs=round(rng.uniform(*PEAK_DBFS), 2),
    )


def make_class(espeak: str, word: str, per_class: int, rng: random.Random, out_dir: Path) -> list[dict]:
    """Synthesise `per_class` distinct clips of one word; re-draw settings whose speech
    would not fit in the clip, so that no word is cut off."""
    (out_dir / word).mkdir(parents=True, exist_ok=True)
    used: set[tuple] = set()
    rows = []
    while len(rows) < per_class:
        for _ in range(MAX_ATTEMPTS):
            utt = draw_utterance(rng, word)
            key = (utt.accent, utt.variant, utt.speed_wpm, utt.pitch)
            if key in used:
                continue
            clip, speech_samples = to_clip(*synthesize(espeak, utt), utt.peak_dbfs)
            if speech_samples <= MAX_SPEECH_SAMPLES:
                break
        else:
            raise RuntimeError(f"could not fit '{word}' into {CLIP_SAMPLES} samples in {MAX_ATTEMPTS} tries")
        used.add(key)
        path = out_dir / word / f"{word}_{len(rows):03d}.flac"
        sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
        rows.append(
            {
                "file": f"{word}/{path.name}",
                **asdict(utt),
                "speech_ms": round(1000 * speech_samples / SAMPLE_RATE),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (its digit sub-folders are replaced)"
    )
    parser.add_argument("--per-class", type=int, default=80, help="clips per digit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    espeak = require_espeak()
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    if args.out.exists():
        strangers = sorted(p.name for p in args.out.iterdir() if p.name not in DIGITS)
        if strangers:
            sys.exit(
                f"error: {args.out} holds files that are not digit folders ({', '.join(strangers[:5])}); "
                "choose an empty or new --out folder"
            )
        shutil.rmtree(args.out)
    rng = random.Random(args.seed)
    rows = []
    for word in DIGITS:
        rows += make_class(espeak, word, args.per_class, rng, args.out)
        print(f"{word}: {args.per_class} clips", flush=True)

    manifest = args.out.with_name(args.out.name + "_manifest.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    size_mb = sum(p.stat().st_size for p in args.out.rglob("*.flac")) / 1e6
    print(f"{len(rows)} clips, {size_mb:.2f} MB in {args.out}; settings in {manifest.name}; {version}")


if __name__ == "__main__":
    main()
