"""The pieces of benchmarks/audio_quality.py on tiny tone data: the jitter, the spectrogram classifier,
the floor and scores, the waveform round trip, the Wilson interval, the verdict, and one end-to-end run
on an untrained checkpoint so that the script cannot rot."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_benchmark, save_untrained_checkpoint

from toolkit.domains.audio import AudioDomain

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
TONE_CLASSES = {"high": 2400.0, "low": 250.0, "mid": 800.0}  # folder name -> base frequency
CLIPS_PER_CLASS = 12
DOMAIN_OPTIONS = dict(
    sample_rate=RATE,
    clip_seconds=0.5,
    n_fft=256,
    hop_length=128,
    n_mels=16,
    griffin_lim_iters=8,
    nnls_iters=10,
    val_fraction=0.25,
)


bench = load_benchmark("audio_quality")
common = sys.modules["benchmarks.common"]  # the helpers exactly as the script imported them


def write_tones(root: Path) -> Path:
    """Per class, clips of a tone near its base frequency with random onset, length and level."""
    rng = np.random.default_rng(0)
    for name, base in TONE_CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(CLIPS_PER_CLASS):
            wave = np.zeros(RATE // 2, dtype=np.float32)
            start, length = rng.integers(0, RATE // 10), rng.integers(RATE // 8, RATE // 4)
            t = np.arange(length) / RATE
            frequency = base * rng.uniform(0.9, 1.1)
            wave[start : start + length] = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * frequency * t)
            sf.write(root / name / f"tone{i:02d}.wav", wave, RATE)
    return root


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return write_tones(tmp_path_factory.mktemp("data") / "tones")


@pytest.fixture(scope="module")
def domain(tones) -> AudioDomain:
    return AudioDomain(root=str(tones), **DOMAIN_OPTIONS)


@pytest.fixture(scope="module")
def trained(domain):
    (train_x, train_labels), (held_out_x, held_out_labels) = common.domain_splits(domain)
    classifier = bench.train_classifier(train_x, train_labels, domain.num_classes, epochs=8, batch_size=8)
    reference = common.reference_for(classifier, train_x, held_out_x, held_out_labels)
    return reference, (train_x, train_labels), (held_out_x, held_out_labels)


# --- the jitter -------------------------------------------------------------------------------


def test_jitter_shifts_in_time_and_keeps_silence():
    log_mels = torch.full((6, 1, 4, 10), -1.0)
    log_mels[..., 3:6] = torch.linspace(-0.5, 0.9, 4)[:, None]
    generator = torch.Generator().manual_seed(0)
    shifted = bench.jitter(log_mels, generator, max_shift=2, max_gain=0.0)
    for original, moved in zip(log_mels, shifted):
        offsets = [s for s in range(-2, 3) if torch.equal(moved, torch.roll(original, s, dims=-1))]
        assert len(offsets) == 1  # content moved by a whole number of frames, silence filled in
    loud = bench.jitter(log_mels, torch.Generator().manual_seed(1), max_shift=0, max_gain=0.3)
    assert torch.equal(loud == -1, log_mels == -1)  # silence stays silent, speech is not silenced
    assert loud.min() >= -1 and loud.max() <= 1
    gains = (loud - log_mels)[log_mels.expand_as(loud) < 0.7].reshape(-1)
    assert gains.abs().max() <= 0.3 + 1e-6 and gains.abs().max() > 0
    again = bench.jitter(log_mels, torch.Generator().manual_seed(0), max_shift=2, max_gain=0.0)
    assert torch.equal(shifted, again)


# --- the classifier, floor and scores ---------------------------------------------------------


def test_classifier_learns_the_tones(domain, trained):
    reference, (train_x, _), (held_out_x, held_out_labels) = trained
    assert domain.class_names == sorted(TONE_CLASSES) and train_x.shape[1:] == domain.sample_shape
    assert len(held_out_labels) == 9 and len(train_x) == 27
    assert reference.classifier_accuracy == 1.0
    assert reference.train_features.shape == (27, 64) and reference.held_out_size == 9


def test_score_of_the_held_out_split_is_the_floor(domain, trained):
    """Held-out clips scored as samples: the classifier's accuracy and exactly the floor; under
    wrong labels no accuracy; noise far above the floor; fewer samples get a floor of their size."""
    reference, _, (held_out_x, held_out_labels) = trained
    result = bench.scored("held-out", reference, held_out_x, held_out_labels, domain.num_classes)
    assert result.accuracy == 1.0 and result.per_class == {0: 1.0, 1: 1.0, 2: 1.0}
    assert result.fd == pytest.approx(reference.floor) and result.floor == reference.floor
    wrong = bench.scored("wrong", reference, held_out_x, (held_out_labels + 1) % 3, domain.num_classes)
    assert wrong.accuracy == 0.0 and wrong.fd == pytest.approx(reference.floor)
    half = torch.where(torch.arange(9) % 2 == 0, held_out_labels, (held_out_labels + 1) % 3)
    partly = bench.scored("partly", reference, held_out_x, half, domain.num_classes)
    expected = {c: float((held_out_labels == half)[half == c].float().mean()) for c in range(3)}
    assert partly.per_class == expected and partly.worst_class_accuracy == min(expected.values())
    assert partly.correct == int((held_out_labels == half).sum())
    noise = 2 * torch.rand(9, *domain.sample_shape, generator=torch.Generator().manual_seed(0)) - 1
    assert bench.scored("noise", reference, noise, held_out_labels, 3).fd > 5 * reference.floor
    few = bench.scored("few", reference, held_out_x[:4], held_out_labels[:4], domain.num_classes)
    assert few.floor == pytest.approx(reference.floor_at(4)) and few.floor != reference.floor
    # Held-out clips are the memorisation reference itself; training clips handed back are copies.
    held_out_copies = result.copies.inputs
    assert held_out_copies.nearest_ratio == pytest.approx(1.0)
    assert held_out_copies.copy_share == held_out_copies.held_out_copy_share < 0.5
    train_x = reference.nearest_inputs.train
    copied = bench.scored("copied", reference, train_x[:9], held_out_labels, domain.num_classes)
    assert copied.copies.inputs.copy_share == copied.copies.features.copy_share == 1.0


def test_unconditional_data_is_refused(tones):
    with pytest.raises(ValueError, match="unconditional"):
        common.domain_splits(AudioDomain(root=str(tones), conditional=False, **DOMAIN_OPTIONS))


def test_waveform_round_trip_keeps_the_class(domain, trained):
    reference, _, (held_out_x, held_out_labels) = trained
    trip = bench.waveform_round_trip(domain, held_out_x)
    assert trip.shape == held_out_x.shape and not torch.equal(trip, held_out_x)
    assert bench.scored("trip", reference, trip, held_out_labels, 3).accuracy == 1.0


def test_classifier_training_is_seeded(trained):
    _, (train_x, train_labels), _ = trained
    first, second = (bench.train_classifier(train_x[:16], train_labels[:16], 3, epochs=1, seed=3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = bench.train_classifier(train_x[:16], train_labels[:16], 3, epochs=1, seed=4)
    assert not torch.equal(first.head.weight, other.head.weight)


# --- interval and verdict ---------------------------------------------------------------------


def test_wilson_interval():
    low, high = common.wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert common.wilson_interval(0, 20)[0] == 0.0 and common.wilson_interval(20, 20)[1] == 1.0
    assert 0.8 < common.wilson_interval(20, 20)[0] < 0.9
    with pytest.raises(ValueError, match="successes"):
        common.wilson_interval(11, 10)


def row(method: str, budget: int, correct: int, n: int):
    result = bench.Scored(method, n, correct, {0: 0.5, 1: 1.0}, 1.0, 1.0)
    return bench.Row(method, budget, budget, budget, result, 1.0)


def test_verdict_reads_the_target_rows_only():
    rows = [
        row("ddim", 20, 95, 100),
        row("euler", 20, 82, 100),
        row("heun", 20, 10, 30),
        row("ddpm", 10, 0, 9),
    ]
    assert bench.verdict(rows) == [
        "- ddim, 20 NFE: 95.0%, meets the target.",
        "- euler, 20 NFE: 82.0%, meets the target, but the 95% interval 73-88% contains it.",
        "- heun, 20 NFE: 33.3%, misses the target.",
    ]


def test_observations_read_the_numbers(trained):
    reference = trained[0]
    trip = bench.Scored("held-out clips, waveform round trip", 9, 8, {0: 0.5, 1: 1.0}, 4.0, 2.0)
    close = row("euler", 20, 20, 20)
    close.result.fd = 0.5  # below its floor of 1.0
    lines = bench.observations(bench.Benchmark(reference, [close, row("ddim", 10, 12, 20)], [trip]), 2, 2.5, [])
    assert "recognised 88.9% of the time (as spectrograms: 100.0%); their FD rises to 2.00x" in lines[1]
    assert "from 60.0% (ddim, 10 NFE) to 100.0% (euler, 20 NFE)" in lines[2]
    assert lines[3].startswith("1 of 2 rows have FD below the floor: at guidance 2.5 ")
    assert lines[4].startswith("This run drew 2 per class, fewer than the default 20 samples")


def test_reproduce_command_names_the_default_run_folder():
    command = bench.reproduce_command(["--ckpt=/tmp/x/last.ckpt", "--n-per-class", "3"])
    assert command == (
        "python benchmarks/audio_quality.py --ckpt=runs/audio/<run>/checkpoints/last.ckpt --n-per-class 3"
    )


# --- end to end on an untrained checkpoint ----------------------------------------------------


def untrained_checkpoint(path: Path, tones: Path) -> Path:
    overrides = ["domain=audio", f"domain.root={tones}", "domain.net.base_channels=8"]
    overrides += [f"domain.{key}={value}" for key, value in DOMAIN_OPTIONS.items()]
    overrides += ["domain.net.channel_mults=[1,2]", "domain.net.attention_levels=[]", "trainer.max_steps=200"]
    return save_untrained_checkpoint(path, overrides)


def test_benchmark_end_to_end(tmp_path, tones, capsys):
    ckpt = untrained_checkpoint(tmp_path / "untrained.ckpt", tones)
    out = tmp_path / "audio.md"
    argv = ["--ckpt", str(ckpt), "--n-per-class", "2", "--samplers", "heun", "dpmpp_2m", "--nfe", "3", "20"]
    argv += ["--classifier-epochs", "2", "--batch-size", "4", "--out", str(out)]
    assert bench.main(argv) == out
    text = out.read_text()
    assert "Reproduce: `python benchmarks/audio_quality.py --ckpt runs/audio/<run>/checkpoints/last.ckpt" in text
    assert "trained 0 steps (trainer.max_steps 200)" in text and "**Floor: FD(held-out split, training split)" in text
    cells = [line.split(" | ") for line in text.splitlines()]
    rows = [r for r in cells if r[0] in ("| heun", "| dpmpp_2m")]
    # Heun at a budget of 3 runs 2 steps (3 counted network calls), at 20 runs 10 steps (19 calls).
    assert [r[:3] for r in rows] == [
        ["| heun", "3", "2"],
        ["| heun", "19", "10"],
        ["| dpmpp_2m", "3", "3"],
    ] + [["| dpmpp_2m", "20", "20"]]
    assert all(math.isfinite(float(r[6])) and float(r[7]) > 0 for r in rows)
    trip_rows = [line.split(" | ")[0] for line in text.splitlines() if "waveform round trip |" in line]
    assert trip_rows == [
        "| held-out clips, waveform round trip",
        "| dpmpp_2m samples at 20 NFE, waveform round trip",
    ]
    assert "- heun, 19 NFE:" in text and "- dpmpp_2m, 20 NFE:" in text and "fewer than the default 20 samples" in text
    assert "Per class asked for (spectrograms): high " in text and ", mid " in text
    assert "; at the samples' size (6) it is **" in text
    assert "- Memorisation (`toolkit/metrics/memorisation.py`), in log-mels" in text
    assert all(r[9].count(" / ") == 1 for r in rows)  # copies % (in / feat)
    assert "| dpmpp_2m" in capsys.readouterr().out
