"""Write the captions of the spoken digits: spoken_digits/metadata.csv, held_out.jsonl, paraphrases.jsonl.

    python data/audio/make_captions.py

Read from spoken_digits_manifest.csv and the clips themselves (see README.md). Each caption names the
word and the attributes measurable in the sound: the voice (male / female, from the espeak-ng variant),
the pitch (low / high: the lowest and highest third of the measured F0 within the voice, the middle third
unnamed) and the speed (fast / slow: the shortest and longest third of the speech duration of that word,
the middle unnamed): "seven, spoken slowly in a high female voice". The attribute columns hold what the
caption names ("" where it names none); ``clip_voice`` is the clip's voice whatever the wording, ``f0_hz``
the measured F0. Deterministic; under a minute.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from toolkit.domains.captions import HELD_OUT_FILE, PARAPHRASES_FILE, write_jsonl

HERE = Path(__file__).resolve().parent
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's variants m1..m8 are male and f1..f5 female; the named ones were sorted by the median F0
# of their clips (speech_f0): 66-96 Hz for Alex, david and max, as m1..m8 (76-98 Hz); 152-225 Hz for
# the others, as f1..f5 (155-204 Hz).
MALE_VARIANTS = {f"m{i}" for i in range(1, 9)} | {"Alex", "david", "max"}
FEMALE_VARIANTS = {f"f{i}" for i in range(1, 6)} | {"Andrea", "Annie", "aunty", "belinda", "grandma", "linda", "steph"}
PITCHES = ("low", "", "high")  # lowest, middle, highest third of the measured F0, within the voice
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
VOICELESS_TEMPLATE = 3  # names no voice; held-out clips use the others, so their prompts name the whole combination
F0_RANGE_HZ = (40.0, 400.0)  # the shipped clips measure about 50-320 Hz
F0_WINDOW = 640  # 40 ms at 16 kHz, compared with itself shifted by up to one period of the lowest F0
F0_HOP = 160  # 10 ms
YIN_THRESHOLD = 0.2  # the first dip of the normalised difference below this is the period (YIN's absolute threshold)
VOICED_APERIODICITY = 0.35  # frames whose dip stays above this are unvoiced (fricatives, breath)
SPEECH_FLOOR_DB = 25.0  # frames this far below the loudest frame of the clip are not speech
MIN_VOICED_FRAMES = 3


def yin_track(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms frame: F0 (Hz), aperiodicity (the normalised difference at that period; 0 = periodic) and
    energy. YIN (de Cheveigne and Kawahara 2002) without interpolation. librosa's ``yin`` gives no
    aperiodicity, so fricatives count as voiced there, and its ``pyin`` finds no voiced frame in about a
    tenth of these clips (espeak-ng's lowest male voices) at forty times the cost."""
    max_lag, min_lag = int(sample_rate / F0_RANGE_HZ[0]), int(sample_rate / F0_RANGE_HZ[1])
    length = F0_WINDOW + max_lag
    padded = np.pad(wave.astype(np.float64), (0, length))
    frames = librosa.util.frame(padded, frame_length=length, hop_length=F0_HOP).T
    size = 1 << int(np.ceil(np.log2(2 * length)))
    spectrum = np.conj(np.fft.rfft(frames[:, :F0_WINDOW], size)) * np.fft.rfft(frames, size)
    correlation = np.fft.irfft(spectrum, size)[:, : max_lag + 1]
    cumulative = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    energy = cumulative[:, F0_WINDOW]
    difference = energy[:, None] + cumulative[:, lags + F0_WINDOW] - cumulative[:, lags] - 2 * correlation
    normalised = difference[:, 1:] * lags[1:] / np.maximum(np.cumsum(difference[:, 1:], axis=1), 1e-20)
    search = normalised[:, min_lag - 1 :]
    minimum = np.zeros_like(search, dtype=bool)
    minimum[:, 1:-1] = (search[:, 1:-1] <= search[:, :-2]) & (search[:, 1:-1] <= search[:, 2:])
    dips = minimum & (search < YIN_THRESHOLD)
    period = np.where(dips.any(axis=1), dips.argmax(axis=1), search.argmin(axis=1))
    aperiodicity = search[np.arange(len(search)), period]
    return sample_rate / (period + min_lag), aperiodicity, energy


def speech_f0(wave: np.ndarray, sample_rate: int) -> float:
    """Median F0 in Hz of the voiced speech in ``wave``: the frames within SPEECH_FLOOR_DB of the loudest
    and periodic (aperiodicity below VOICED_APERIODICITY), or, when fewer than MIN_VOICED_FRAMES are, the
    MIN_VOICED_FRAMES most periodic speech frames."""
    if wave.ndim != 1 or wave.size < F0_WINDOW:
        raise ValueError(f"need a mono clip of at least {F0_WINDOW} samples, got shape {wave.shape}")
    f0, aperiodicity, energy = yin_track(wave, sample_rate)
    if not energy.max() > 0:
        raise ValueError("the clip is silent: no F0 to measure")
    speech = np.flatnonzero(10 * np.log10(np.maximum(energy, 1e-20) / energy.max()) > -SPEECH_FLOOR_DB)
    voiced = speech[aperiodicity[speech] < VOICED_APERIODICITY]
    if voiced.size < MIN_VOICED_FRAMES:
        voiced = speech[np.argsort(aperiodicity[speech], kind="stable")[:MIN_VOICED_FRAMES]]
    return float(np.median(f0[voiced]))


def measured_f0(root: Path, files: list[str]) -> np.ndarray:
    """``speech_f0`` of each file (paths relative to ``root``), rounded to 0.1 Hz as stored in metadata.csv."""
    values = []
    for name in files:
        wave, rate = sf.read(root / name, dtype="float32")
        values.append(round(speech_f0(wave, rate), 1))
    return np.array(values)


def pitch_words(f0: np.ndarray, voices: list[str]) -> list[str]:
    """low / "" / high by the terciles of ``f0`` within each voice: the pitch heard for that voice."""
    words = [""] * len(f0)
    for voice in sorted(set(voices)):
        members = [i for i, v in enumerate(voices) if v == voice]
        for i, value in zip(members, tercile_words(f0[members], PITCHES)):
            words[i] = value
    return words


def paraphrases(word: str, voice: str, pitch: str, speed: str) -> list[str]:
    noun, adjective = VOICE_NOUNS[voice], voice
    return [
        f"the word {word} said{PARAPHRASE_SPEEDS[speed]} by a {noun}{PARAPHRASE_PITCHES[pitch]}",
        f"a {adjective} speaker uttering {word}{PARAPHRASE_PACES[speed]}{PARAPHRASE_TONES[pitch]}",
    ]


def build(manifest: Path, out: Path) -> None:
    """Caption the clips listed in ``manifest`` (which lie in ``out``) and write the three files there."""
    with manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))
    voices = [voice_of(r["variant"]) for r in rows]
    f0 = measured_f0(out, [r["file"] for r in rows])
    pitches = pitch_words(f0, voices)
    speed_words = [""] * len(rows)
    for word in WORDS:
        members = [i for i, r in enumerate(rows) if r["word"] == word]
        for i, value in zip(members, tercile_words(np.array([float(rows[i]["speech_ms"]) for i in members]), SPEEDS)):
            speed_words[i] = value
    captioned, withheld = [], []
    for i, row in enumerate(rows):
        attributes = {
            "word": row["word"],
            "voice": voices[i],
            "pitch": pitches[i],
            "speed": speed_words[i],
        }
        is_held_out = attributes == held_out(row["word"])
        template = i % (TEMPLATES - 1 if is_held_out else TEMPLATES)
        text = caption(template, **attributes)
        named = {**attributes, "voice": "" if template == VOICELESS_TEMPLATE else voices[i]}
        settings = {
            "clip_voice": voices[i],
            "f0_hz": f0[i],
            "variant": row["variant"],
            "pitch_setting": row["pitch"],
            "speed_wpm": row["speed_wpm"],
            "speech_ms": row["speech_ms"],
        }
        entry = {"file_name": row["file"], "text": text, **named, **settings}
        (withheld if is_held_out else captioned).append(entry)
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
