"""Write the captions of the spoken digits: spoken_digits/metadata.csv, held_out.jsonl, paraphrases.jsonl.

    python data/audio/make_captions.py

Read from spoken_digits_manifest.csv (no audio is touched; see README.md). Each caption names the
word and the attributes measurable in the sound: the voice (male / female, from the espeak-ng variant),
the pitch (low / high: the lowest and highest third of the pitch setting, the middle third unnamed) and
the speed (fast / slow: the shortest and longest third of the speech duration of that word, the middle
unnamed): "seven, spoken slowly in a high female voice". Deterministic.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, write_jsonl

HERE = Path(__file__).resolve().parent
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's variants m1..m8 are male and f1..f5 female; the named ones were sorted by their median
# F0 in the shipped clips (torchaudio's detect_pitch_frequency over the speech): 94-120 Hz for Alex,
# david and max, as m1..m8 (93-103 Hz); 133-229 Hz for the others, as f1..f5 (118-152 Hz).
MALE_VARIANTS = {f"m{i}" for i in range(1, 9)} | {"Alex", "david", "max"}
FEMALE_VARIANTS = {f"f{i}" for i in range(1, 6)} | {"Andrea", "Annie", "aunty", "belinda", "grandma", "linda", "steph"}
PITCHES = ("low", "", "high")  # lowest, middle, highest third of the pitch setting
SPEEDS = ("fast", "", "slow")  # shortest, middle, longest third of the speech duration, per word
VOICE_NOUNS = {"male": "man", "female": "woman"}
SPEED_ADVERBS = {"fast": "fast", "slow": "slowly", "": ""}
# Wordings kept out of the captions (paraphrases.jsonl).
PARAPHRASE_SPEEDS = {"fast": " quickly", "slow": " unhurriedly", "": ""}
PARAPHRASE_PACES = {"fast": " briskly", "slow": " leisurely", "": ""}
PARAPHRASE_PITCHES = {"low": " with a deep voice", "high": " with a shrill voice", "": ""}
PARAPHRASE_TONES = {"low": " in a deep tone", "high": " in a shrill tone", "": ""}


def voice_of(variant: str) -> str:
    if variant in MALE_VARIANTS:
        return "male"
    if variant in FEMALE_VARIANTS:
        return "female"
    raise ValueError(f"unknown espeak-ng variant {variant!r}; add it to MALE_VARIANTS or FEMALE_VARIANTS")


def held_out(word: str) -> dict:
    """The (voice, pitch, speed) combination of ``word`` kept out of training, every attribute named and
    alternating over the words, so that each value is held out with some words and seen with others."""
    index = WORDS.index(word)
    return {
        "word": word,
        "voice": ("female", "male")[index % 2],
        "pitch": ("high", "low")[index // 2 % 2],
        "speed": ("slow", "fast")[index // 4 % 2],
    }


def tercile_words(values: np.ndarray, words: tuple[str, str, str]) -> list[str]:
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return [words[0] if v < low else words[2] if v > high else words[1] for v in values]


def caption(template: int, word: str, voice: str, pitch: str, speed: str) -> str:
    """One of the training wordings, e.g. "seven, spoken slowly in a high female voice"."""
    speed_word = f" {SPEED_ADVERBS[speed]}" if speed else ""
    pitch_word = f" {pitch}" if pitch else ""
    if template == 0:
        return f"{word}, spoken{speed_word} in a{pitch_word} {voice} voice"
    if template == 1:
        return f"a {VOICE_NOUNS[voice]} saying {word}{speed_word}" + (f" in a {pitch} voice" if pitch else "")
    if template == 2:
        return f"the word {word} in a{pitch_word} {voice} voice" + (f", spoken{speed_word}" if speed else "")
    spoken = f" spoken{speed_word}" if speed else ""
    voice_phrase = f" in a {pitch} voice" if pitch else ""
    return f"{word},{spoken}{voice_phrase}" if spoken or voice_phrase else word  # no voice named


TEMPLATES = 4


def paraphrases(word: str, voice: str, pitch: str, speed: str) -> list[str]:
    noun, adjective = VOICE_NOUNS[voice], voice
    return [
        f"the word {word} said{PARAPHRASE_SPEEDS[speed]} by a {noun}{PARAPHRASE_PITCHES[pitch]}",
        f"a {adjective} speaker uttering {word}{PARAPHRASE_PACES[speed]}{PARAPHRASE_TONES[pitch]}",
    ]


def build(manifest: Path, out: Path) -> None:
    with manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))
    pitch_words = tercile_words(np.array([float(r["pitch"]) for r in rows]), PITCHES)
    speed_words = [""] * len(rows)
    for word in WORDS:
        members = [i for i, r in enumerate(rows) if r["word"] == word]
        for i, value in zip(members, tercile_words(np.array([float(rows[i]["speech_ms"]) for i in members]), SPEEDS)):
            speed_words[i] = value
    captioned, withheld = [], []
    for i, row in enumerate(rows):
        attributes = {
            "word": row["word"],
            "voice": voice_of(row["variant"]),
            "pitch": pitch_words[i],
            "speed": speed_words[i],
        }
        text = caption(i % TEMPLATES, **attributes)
        settings = {
            "variant": row["variant"],
            "pitch_setting": row["pitch"],
            "speed_wpm": row["speed_wpm"],
            "speech_ms": row["speech_ms"],
        }
        entry = {"file_name": row["file"], "text": text, **attributes, **settings}
        (withheld if attributes == held_out(row["word"]) else captioned).append(entry)
    with (out / "metadata.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(captioned[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(captioned)
    write_jsonl(out / HELD_OUT_FILE, withheld)
    wordings = []
    for word in WORDS:
        for voice in ("male", "female"):
            for pitch in PITCHES:
                for speed in SPEEDS:
                    attributes = {"word": word, "voice": voice, "pitch": pitch, "speed": speed}
                    for text in paraphrases(**attributes):
                        wordings.append({"text": text, **attributes, "held_out": attributes == held_out(word)})
    write_jsonl(out / PARAPHRASES_FILE, wordings)
    print(f"{len(captioned)} captioned, {len(withheld)} held out, {len(wordings)} paraphrases -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=HERE / "spoken_digits_manifest.csv")
    parser.add_argument("--out", type=Path, default=HERE / "spoken_digits")
    args = parser.parse_args()
    build(args.manifest, args.out)


if __name__ == "__main__":
    main()
