"""Captioned data (Hugging Face's folder convention): metadata.jsonl / metadata.csv parsed and checked,
captions as ``tokens`` in the image, audio and point-cloud batches, the shipped captioned sets, their
held-out combinations and paraphrases, and the uncaptioned defaults left as they were."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from toolkit.domains import pointcloud as pc
from toolkit.domains.audio import DEFAULT_ROOT, AudioDomain
from toolkit.domains.base import Domain
from toolkit.domains.captions import (
    HELD_OUT_FILE,
    PARAPHRASES_FILE,
    captions_of,
    read_captions,
    read_held_out,
    read_jsonl,
    write_jsonl,
)
from toolkit.domains.image import CAPTIONED_DIGITS_ROOT, ImageDomain
from toolkit.resources import resource_dir

LEARNED = {"kind": "learned", "max_tokens": 64}


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)


def write_tone(path: Path, frequency: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(2000) / 8000
    sf.write(path, 0.5 * np.sin(2 * np.pi * frequency * t).astype(np.float32), 8000)


def image_folder(root: Path, captions: dict[str, str], fmt: str = "jsonl") -> Path:
    """PNGs named by ``captions`` (each a different grey, so rows are told apart) and their metadata."""
    for i, name in enumerate(captions):
        write_png(root / name, 20 * (i + 1))
    rows = [{"file_name": name, "text": text, "colour": "grey"} for name, text in captions.items()]
    if fmt == "jsonl":
        write_jsonl(root / "metadata.jsonl", rows)
    else:
        with (root / "metadata.csv").open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["file_name", "text", "colour"])
            writer.writeheader()
            writer.writerows(rows)
    return root


# ----------------------------------------------------------------------------------------------
# Parsing and errors


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_both_metadata_formats_give_captions_and_attributes(tmp_path: Path, fmt: str):
    root = image_folder(tmp_path, {"a.png": "a dark square", "sub/b.png": "a light, bright square"}, fmt)
    captions = read_captions(root)
    assert list(captions) == ["a.png", "sub/b.png"]
    assert captions["sub/b.png"]["text"] == "a light, bright square"
    assert captions["a.png"]["colour"] == "grey"


def bad_case(root: Path, case: str) -> str:
    """Write a folder with one kind of bad captions; return the words its error must contain."""
    write_png(root / "a.png", 10)
    write_png(root / "b.png", 200)
    rows = [{"file_name": "a.png", "text": "dark"}, {"file_name": "b.png", "text": "light"}]
    if case == "both_files":
        (root / "metadata.csv").write_text("file_name,text\na.png,dark\nb.png,light\n")
        expected = "both metadata.jsonl and metadata.csv"
    elif case == "missing_column":
        rows[1] = {"file_name": "b.png", "caption": "light"}
        expected = "line 2 has no 'text'"
    elif case == "missing_csv_column":
        (root / "metadata.csv").write_text("file_name,caption\na.png,dark\nb.png,light\n")
        return "no 'text' column"
    elif case == "missing_file":
        rows.append({"file_name": "c.png", "text": "none"})
        expected = "line 3: file_name 'c.png' does not exist"
    elif case == "duplicate":
        rows.append({"file_name": "a.png", "text": "dark again"})
        expected = "already captioned on line 1"
    elif case == "empty_text":
        rows[0]["text"] = "   "
        expected = "line 1: empty text for 'a.png'"
    elif case == "uncaptioned_file":
        rows = rows[:1]
        expected = "have no caption, e.g. 'b.png'; add a row"
    elif case == "bad_json":
        (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "dark"}\n{"file_name": \n')
        return "line 2 is not valid JSON"
    elif case == "not_data":
        (root / "notes.txt").write_text("hello")
        rows.append({"file_name": "notes.txt", "text": "a note"})
        expected = "'notes.txt' (in the captions of"
    write_jsonl(root / "metadata.jsonl", rows)
    return expected


@pytest.mark.parametrize(
    "case",
    [
        "both_files",
        "missing_column",
        "missing_csv_column",
        "missing_file",
        "duplicate",
        "empty_text",
        "uncaptioned_file",
        "bad_json",
        "not_data",
    ],
)
def test_each_bad_caption_case_names_what_is_wrong(tmp_path: Path, case: str):
    expected = bad_case(tmp_path, case)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        ImageDomain(root=str(tmp_path), text_encoder=LEARNED).load()


def test_captions_need_a_text_encoder_and_a_text_encoder_needs_captions(tmp_path: Path):
    captioned = image_folder(tmp_path / "captioned", {"a.png": "dark", "b.png": "light"})
    with pytest.raises(ValueError, match="set text_encoder=wordllama, e.g. experiment=image_prompts"):
        ImageDomain(root=str(captioned)).load()
    write_png(tmp_path / "plain" / "a.png", 10)
    with pytest.raises(ValueError, match="has no captions; add metadata.jsonl"):
        ImageDomain(root=str(tmp_path / "plain"), text_encoder=LEARNED).load()
    with pytest.raises(ValueError, match="source=captioned_digits"):
        ImageDomain(text_encoder=LEARNED).load()


def test_held_out_files_are_left_out_and_may_not_also_be_captioned(tmp_path: Path):
    root = image_folder(tmp_path, {"a.png": "dark", "b.png": "mid", "c.png": "light"})
    write_jsonl(
        root / "metadata.jsonl", [{"file_name": "a.png", "text": "dark"}, {"file_name": "b.png", "text": "mid"}]
    )
    write_jsonl(root / HELD_OUT_FILE, [{"file_name": "c.png", "text": "light", "shade": "light"}])
    files = sorted(root.glob("*.png"))
    assert captions_of(root, files, LEARNED, "image", "images") == {files[0]: "dark", files[1]: "mid"}
    assert read_held_out(root)["c.png"]["shade"] == "light"
    write_jsonl(root / HELD_OUT_FILE, [{"file_name": "b.png", "text": "mid"}, {"file_name": "c.png", "text": "x"}])
    with pytest.raises(ValueError, match="both captioned in metadata.jsonl and held out"):
        captions_of(root, files, LEARNED, "image", "images")


def test_the_net_gets_the_text_encoder_only_when_captioned():
    """``Domain.build_net_from`` hands the net its text encoder config only when one is set, so label
    and unconditional nets are built exactly as before."""
    domain = Domain()
    assert domain.build_net_from({"_target_": "builtins.dict"}, in_channels=1) == {"in_channels": 1}
    domain.text_encoder = LEARNED
    assert domain.build_net_from({"_target_": "builtins.dict"}, in_channels=1) == {
        "in_channels": 1,
        "text_encoder": LEARNED,
    }


# ----------------------------------------------------------------------------------------------
# Batches carry the captions' tokens, for the right files


def all_rows(datamodule) -> dict[str, torch.Tensor]:
    tensors = [datamodule.train_set.tensors, datamodule.val_set.tensors]
    return {key: torch.cat([t[key] for t in tensors]) for key in tensors[0]}


def test_captioned_image_batches_carry_the_tokens_of_each_files_caption(tmp_path: Path):
    captions = {f"{i}.png": f"square number {i}" for i in range(6)}
    root = image_folder(tmp_path, captions, fmt="csv")
    domain = ImageDomain(root=str(root), resolution=8, val_fraction=0.34, text_encoder=LEARNED)
    rows = all_rows(domain.datamodule(batch_size=2))
    assert set(rows) == {"x", "tokens"} and domain.num_classes == 0
    greys = {round(float(v), 4): name for v, name in ((20 * (i + 1) / 255 * 2 - 1, n) for i, n in enumerate(captions))}
    expected = domain.tokenize([captions[greys[round(float(x.mean()), 4)]] for x in rows["x"]])
    assert torch.equal(rows["tokens"], expected)
    batch = next(iter(domain.datamodule(batch_size=2).train_dataloader()))
    assert batch["tokens"].shape == (2, 64) and batch["tokens"].dtype == torch.int64
    assert domain.training_batch(batch).cond.keys() == {"tokens"}


def test_captioned_image_class_folders_still_give_labels(tmp_path: Path):
    root = image_folder(tmp_path, {"cats/a.png": "a cat", "cats/b.png": "a cat", "dogs/c.png": "a dog"})
    domain = ImageDomain(root=str(root), resolution=8, val_fraction=0.0, text_encoder=LEARNED)
    rows = domain.datamodule(batch_size=2).train_set.tensors
    assert domain.class_names == ["cats", "dogs"]
    assert rows["label"].tolist() == [0, 0, 1]
    assert torch.equal(rows["tokens"], domain.tokenize(["a cat", "a cat", "a dog"]))


def test_captioned_audio_batches_carry_the_tokens_of_each_files_caption(tmp_path: Path):
    frequencies = {"low/a.wav": 200.0, "low/b.wav": 300.0, "high/c.wav": 1500.0, "high/d.wav": 2500.0}
    for name, frequency in frequencies.items():
        write_tone(tmp_path / name, frequency)
    rows = [{"file_name": name, "text": f"a tone of {int(f)} hertz"} for name, f in frequencies.items()]
    write_jsonl(tmp_path / "metadata.jsonl", rows[:3])
    write_jsonl(tmp_path / HELD_OUT_FILE, rows[3:])
    options = dict(sample_rate=8000, clip_seconds=0.25, n_fft=256, hop_length=64, n_mels=16, val_fraction=0.0)
    domain = AudioDomain(root=str(tmp_path), conditional=False, text_encoder=LEARNED, **options)
    train = domain.datamodule(batch_size=2).train_set.tensors
    assert set(train) == {"x", "tokens"} and len(train["x"]) == 3
    # files in sorted order of their class folder, then name: high/c, low/a, low/b
    expected = domain.tokenize(["a tone of 1500 hertz", "a tone of 200 hertz", "a tone of 300 hertz"])
    assert torch.equal(train["tokens"], expected)
    plain = AudioDomain(root=str(tmp_path), conditional=False, **options)
    with pytest.raises(ValueError, match="experiment=audio_prompts"):
        plain.examples()


def test_captioned_pointcloud_folder_and_the_captioned_procedural_set(tmp_path: Path):
    root = pc.captioned_procedural_dataset(6, seed=0, cache_dir=tmp_path)
    assert root.name == "procedural-captioned-v1-seed0-n6"
    domain = pc.PointCloudDomain(
        source="procedural_captioned",
        shapes_per_class=6,
        cache_dir=str(tmp_path),
        num_points=32,
        val_fraction=0.0,
        text_encoder=LEARNED,
    )
    assert domain.num_classes == 0
    train = domain.split("train")
    captions = read_captions(root)
    held_out = read_held_out(root)
    assert len(train) == len(captions) == 30 - len(held_out)
    assert train.captions == [row["text"] for row in captions.values()]
    rows = domain.datamodule(batch_size=4).train_set.tensors
    assert torch.equal(rows["tokens"], domain.tokenize(train.captions))
    # the meshes are those of the labelled procedural set
    plain = pc.procedural_dataset(6, seed=0, cache_dir=tmp_path)
    assert (root / "lamp_0003.ply").read_bytes() == (plain / "lamp" / "0003.ply").read_bytes()
    with pytest.raises(ValueError, match="experiment=pointcloud_prompts"):
        pc.PointCloudDomain(source="procedural_captioned", shapes_per_class=6, cache_dir=str(tmp_path)).split("train")


def test_procedural_captions_name_measured_attributes():
    rows = pc.procedural_captions(12, seed=0)
    lamps = [row for row in rows if row["shape"] == "lamp"]
    assert sum(row["height"] == "tall" for row in lamps) == 4 and sum(row["height"] == "short" for row in lamps) == 4
    ratios = {}
    for row in lamps:
        index = int(row["file_name"].split("_")[1].split(".")[0])
        mesh = pc.procedural_shape("lamp", index)
        ratios[row["height"]] = ratios.get(row["height"], []) + [mesh.extents[1] / max(mesh.extents[[0, 2]])]
    assert max(ratios["short"]) < min(ratios[""]) <= max(ratios[""]) < min(ratios["tall"])
    tall_wide = [r for r in lamps if r["height"] == "tall" and r["width"] == "wide"]
    assert all(r["held_out"] and "a tall lamp with a wide shade" in r["text"] for r in tall_wide)
    chairs = {r["part"] for r in rows if r["shape"] == "chair"}
    assert chairs == {"armrests", "no armrests"}
    assert pc.shape_phrase({"shape": "airplane", "height": "", "width": "wide", "part": "no engines"}) == (
        "an airplane with wide wings and no engines"
    )


# ----------------------------------------------------------------------------------------------
# The shipped captioned sets


def shipped_image_files() -> list[str]:
    return sorted(p.name for p in CAPTIONED_DIGITS_ROOT.glob("*.png"))


def test_shipped_digits_captions_cover_every_file_and_hold_out_their_combinations():
    captions, held_out = read_captions(CAPTIONED_DIGITS_ROOT), read_held_out(CAPTIONED_DIGITS_ROOT)
    assert len(shipped_image_files()) == 1797
    assert sorted([*captions, *held_out]) == shipped_image_files()
    attributes = json.loads((CAPTIONED_DIGITS_ROOT / "attributes.json").read_text())
    combinations = {(c["digit"], c["weight"], c["slant"]) for c in attributes["held_out"]}
    assert {(r["digit"], r["weight"], r["slant"]) for r in held_out.values()} == combinations
    assert not {(r["digit"], r["weight"], r["slant"]) for r in captions.values()} & combinations
    held_texts = {r["text"] for r in held_out.values()}
    assert not held_texts & {r["text"] for r in captions.values()}
    assert "a bold seven leaning right" in {r["text"] for r in captions.values()} | held_texts
    paraphrases = [row for _, row in read_jsonl(CAPTIONED_DIGITS_ROOT / PARAPHRASES_FILE)]
    assert len(paraphrases) == 10 * 3 * 3 * 2
    assert not {r["text"] for r in paraphrases} & {r["text"] for r in captions.values()}
    assert sum(CAPTIONED_DIGITS_ROOT.joinpath(name).stat().st_size for name in shipped_image_files()) < 1_000_000


def load_script(name: str, relative: str):
    """A rebuild script under data/ as a module (skipped when the package was installed without it)."""
    from importlib import util

    spec = util.spec_from_file_location(name, resource_dir("data") / relative)
    if spec is None or not Path(spec.origin).is_file():
        pytest.skip("the rebuild script is not installed with the package")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_digit_attributes_are_measured_from_the_files():
    make = load_script("make_digits", "images/make_captioned_digits.py")
    rows = list(read_captions(CAPTIONED_DIGITS_ROOT).values())[:200]
    pixels = np.stack(
        [np.asarray(Image.open(CAPTIONED_DIGITS_ROOT / r["file_name"]), dtype=np.float64) / 255 for r in rows]
    )
    np.testing.assert_allclose(make.ink_mass(pixels), [r["ink_mass"] for r in rows], atol=1e-3)
    np.testing.assert_allclose(make.shear(pixels), [r["shear"] for r in rows], atol=1e-3)
    bounds = json.loads((CAPTIONED_DIGITS_ROOT / "attributes.json").read_text())["weight_terciles"]
    for row in rows:
        low, high = bounds[str(row["digit"])]
        assert row["weight"] == ("thin" if row["ink_mass"] < low else "bold" if row["ink_mass"] > high else "")


def test_shipped_digits_give_token_batches():
    domain = ImageDomain(source="captioned_digits", text_encoder=LEARNED)
    images, _ = domain.load()
    assert images.shape == (1797 - len(read_held_out(CAPTIONED_DIGITS_ROOT)), 1, 16, 16)
    assert domain.captions == [row["text"] for row in read_captions(CAPTIONED_DIGITS_ROOT).values()]
    with pytest.raises(ValueError, match="experiment=image_prompts"):
        ImageDomain(source="captioned_digits").load()


def test_shipped_spoken_digit_captions_cover_every_clip_and_hold_out_their_combinations():
    captions, held_out = read_captions(DEFAULT_ROOT), read_held_out(DEFAULT_ROOT)
    clips = sorted(p.relative_to(DEFAULT_ROOT).as_posix() for p in DEFAULT_ROOT.glob("*/*.flac"))
    assert sorted([*captions, *held_out]) == clips
    keys = ("word", "voice", "pitch", "speed")
    held = {tuple(r[k] for k in keys) for r in held_out.values()}
    assert len(held) == 10 and not held & {tuple(r[k] for k in keys) for r in captions.values()}
    with (DEFAULT_ROOT.parent / "spoken_digits_manifest.csv").open() as file:
        manifest = {row["file"]: row for row in csv.DictReader(file)}
    male = {f"m{i}" for i in range(1, 9)} | {"Alex", "david", "max"}
    for name, row in captions.items():
        assert row["word"] in row["text"] and row["word"] == manifest[name]["word"]
        assert row["clip_voice"] == ("male" if manifest[name]["variant"] in male else "female")
        assert row["voice"] in (row["clip_voice"], "")
        assert bool(row["voice"]) == any(w in row["text"].split() for w in ("male", "female", "man", "woman"))
        assert row["speech_ms"] == manifest[name]["speech_ms"]
    assert "seven, spoken slowly in a high female voice" in {
        r["text"] for r in [*captions.values(), *held_out.values()]
    }
    assert all(r["voice"] for r in held_out.values())  # held-out prompts name the whole combination
    assert not {r["text"] for r in held_out.values()} & {r["text"] for r in captions.values()}
    paraphrases = [row for _, row in read_jsonl(DEFAULT_ROOT / PARAPHRASES_FILE)]
    assert not {r["text"] for r in paraphrases} & {r["text"] for r in captions.values()}


def shipped_spoken_digit_rows() -> list[dict]:
    return [*read_captions(DEFAULT_ROOT).values(), *read_held_out(DEFAULT_ROOT).values()]


def test_shipped_spoken_digit_pitch_words_are_thirds_of_the_measured_f0_within_the_voice():
    rows = shipped_spoken_digit_rows()
    assert len(rows) == 800
    for voice in ("male", "female"):
        members = [r for r in rows if r["clip_voice"] == voice]
        f0 = np.array([float(r["f0_hz"]) for r in members])
        low, high = np.quantile(f0, [1 / 3, 2 / 3])
        assert [r["pitch"] for r in members] == ["low" if v < low else "high" if v > high else "" for v in f0]
        counts = [sum(r["pitch"] == p for r in members) for p in ("low", "", "high")]
        assert min(counts) > len(members) / 3 - 10
    male_f0 = [float(r["f0_hz"]) for r in rows if r["clip_voice"] == "male"]
    female_f0 = [float(r["f0_hz"]) for r in rows if r["clip_voice"] == "female"]
    assert np.median(male_f0) < 100 < 150 < np.median(female_f0)


def test_shipped_spoken_digit_f0_is_measured_from_the_clips():
    make = load_script("make_audio_captions", "audio/make_captions.py")
    rows = shipped_spoken_digit_rows()[::50]
    measured = make.measured_f0(DEFAULT_ROOT, [r["file_name"] for r in rows])
    np.testing.assert_allclose(measured, [float(r["f0_hz"]) for r in rows], atol=0.051)


@pytest.mark.parametrize("f0", [55.0, 110.0, 240.0])
def test_caption_f0_measure_finds_the_fundamental_of_a_voiced_tone_between_fricative_noise(f0: float):
    make = load_script("make_audio_captions", "audio/make_captions.py")
    rate, rng = 16_000, np.random.default_rng(0)
    t = np.arange(int(0.3 * rate)) / rate
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))  # harmonics confuse a naive period pick
    noise = rng.normal(0.0, 0.5, int(0.15 * rate))  # a loud fricative, as the /s/ of "six"
    wave = np.concatenate([noise, 0.5 * tone, noise, np.zeros(rate // 4)]).astype(np.float32)
    assert make.speech_f0(wave, rate) == pytest.approx(f0, rel=0.03)
    with pytest.raises(ValueError, match="silent"):
        make.speech_f0(np.zeros(rate, dtype=np.float32), rate)


def test_caption_pitch_words_split_each_voice_at_its_own_terciles():
    make = load_script("make_audio_captions", "audio/make_captions.py")
    f0 = np.array([60.0, 90.0, 120.0, 150.0, 200.0, 250.0])
    voices = ["male", "male", "male", "female", "female", "female"]
    assert make.pitch_words(f0, voices) == ["low", "", "high", "low", "", "high"]


# ----------------------------------------------------------------------------------------------
# The uncaptioned defaults are unchanged


def test_uncaptioned_defaults_ignore_the_shipped_captions():
    audio = AudioDomain(conditional=True)
    files, labels, _ = audio.find_files()
    assert len(files) == 800 and audio.caption_map(files) is None
    assert "tokens" not in audio.datamodule(batch_size=4).train_set.tensors


@pytest.mark.parametrize("make", [ImageDomain, AudioDomain, pc.PointCloudDomain])
def test_the_net_gets_a_text_encoder_only_when_one_is_set(make, monkeypatch):
    given = []
    monkeypatch.setattr("toolkit.domains.base.hydra.utils.instantiate", lambda config, **kwargs: given.append(kwargs))
    for text_encoder in (None, LEARNED):
        make(text_encoder=text_encoder, net={"_target_": "unused"}).build_net()
    assert "text_encoder" not in given[0] and given[1]["text_encoder"] == LEARNED


def test_procedural_meshes_are_unchanged():
    digest = hashlib.sha256()
    for name in pc.PROCEDURAL_CLASSES:
        for index in range(20):
            mesh = pc.procedural_shape(name, index)
            digest.update(np.ascontiguousarray(mesh.vertices).tobytes())
            digest.update(np.ascontiguousarray(mesh.faces).tobytes())
    # the digest of the meshes before the builders returned their parameters
    assert digest.hexdigest() == "c6ce46aea14ea0497b33e8cd6f195729ae45199c4a5ade4af65256a3f2fa8516"


def test_the_wheel_carries_every_shipped_captioned_file():
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "toolkit.data"
    ]
    shipped = [*(root / "data" / "images").rglob("*"), *(root / "data" / "audio" / "spoken_digits").glob("*.*")]
    relative = [p.relative_to(root / "data").as_posix() for p in shipped if p.is_file() and p.suffix != ".py"]
    missing = [name for name in relative if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
    assert not missing, f"add package-data patterns for {missing[:3]} in pyproject.toml"


def test_every_shipped_caption_and_paraphrase_fits_the_default_tokenizer(tmp_path: Path):
    from toolkit.text import build_tokenizer

    tokenizer = build_tokenizer({"kind": "wordllama", "max_tokens": 32})
    shapes = pc.procedural_captions(6, seed=0)
    texts = [row["text"] for row in [*shapes, *pc.shape_paraphrases(shapes)]]
    for root in (CAPTIONED_DIGITS_ROOT, DEFAULT_ROOT):
        texts += [row["text"] for row in [*read_captions(root).values(), *read_held_out(root).values()]]
        texts += [row["text"] for _, row in read_jsonl(root / PARAPHRASES_FILE)]
    assert (tokenizer(texts) != 0).any(dim=1).all()  # raises for a prompt over 32 tokens
    assert max(len(text.encode()) for text in texts) <= 64  # the byte tokenizer with max_tokens=64
