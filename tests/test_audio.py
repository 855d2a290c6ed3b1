"""Audio domain: reading sound files, the log-mel codec, the shipped data, bad input, outputs."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from toolkit.core import sampler, schedule
from toolkit.core.denoiser import Denoiser
from toolkit.domains.audio import DEFAULT_ROOT, AudioDomain, load_audio

RATE = 16000
CONFIG = Path(__file__).resolve().parents[1] / "conf" / "domain" / "audio.yaml"
DIGITS = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]


def sine(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def make_folder(root: Path, classes: dict[str, list[float]], rate: int = RATE, suffix: str = ".wav") -> Path:
    """One sub-folder per class with a 0.6 s tone of each listed frequency."""
    for name, frequencies in classes.items():
        (root / name).mkdir(parents=True)
        for i, frequency in enumerate(frequencies):
            sf.write(root / name / f"clip{i}{suffix}", sine(frequency, 0.6, rate), rate)
    return root


@pytest.fixture
def tones(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "tones", {"high": [2000.0, 2500.0, 3000.0], "low": [200.0, 300.0, 400.0]})


@pytest.fixture
def domain(tones: Path) -> AudioDomain:
    return AudioDomain(root=str(tones), griffin_lim_iters=8, nnls_iters=20, val_fraction=0.34)


# ----- reading sound files -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_sound_file_round_trip(tmp_path: Path, suffix: str):
    wave = sine(440.0, 0.5, RATE)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, wave, RATE)
    back = load_audio(path, RATE)
    assert back.dtype == np.float32 and back.shape == wave.shape
    tolerance = 2 / 32768 if suffix != ".ogg" else 0.05  # Vorbis is lossy
    assert np.abs(back - wave).max() < tolerance


def test_stereo_is_mixed_to_mono(tmp_path: Path):
    left, right = sine(440.0, 0.25, RATE), sine(440.0, 0.25, RATE, amplitude=0.1)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", RATE), (left + right) / 2, atol=1e-6)


def test_resampling_keeps_duration_and_pitch(tmp_path: Path):
    sf.write(tmp_path / "cd.wav", sine(1000.0, 0.5, 44100), 44100)
    wave = load_audio(tmp_path / "cd.wav", RATE)
    assert wave.shape == (8000,) and wave.dtype == np.float32
    assert abs(peak_frequency(wave, RATE) - 1000.0) <= 2.0
    assert 0.3 < np.sqrt(np.mean(wave[1000:-1000] ** 2)) < 0.4  # a 0.5 amplitude sine has RMS 0.354


# ----- the log-mel codec ---------------------------------------------------------------------


def test_encode_shapes_and_range(domain: AudioDomain):
    assert domain.sample_shape == (1, 64, 64)
    one = domain.encode(sine(1000.0, 1.0, RATE))
    batch = domain.encode(np.stack([sine(500.0, 1.0, RATE), np.zeros(RATE, np.float32)]))
    assert one.shape == (1, 64, 64) and batch.shape == (2, 1, 64, 64) and batch.dtype == torch.float32
    assert float(batch.min()) >= -1 and float(batch.max()) <= 1
    assert torch.all(batch[1] == -1), "silence must sit on the log floor"
    full_scale_square = np.sign(sine(1000.0, 1.0, RATE)) * 1.0
    assert float(domain.encode(full_scale_square).max()) <= 1


def test_encode_pads_and_crops_to_clip_length(domain: AudioDomain):
    short, long = sine(1000.0, 0.3, RATE), sine(1000.0, 1.7, RATE)
    assert torch.all(domain.encode(short)[..., -10:] == -1), "padding is silence"
    torch.testing.assert_close(domain.encode(long), domain.encode(long[:RATE]))


def test_frames_are_rounded_to_a_multiple_of_eight(tones: Path):
    padded = AudioDomain(root=str(tones), hop_length=256)  # 1 + 16000 // 256 = 63 STFT frames
    assert padded.sample_shape == (1, 64, 64) and padded.stft_frames == 63
    x = padded.encode(sine(300.0, 1.0, RATE))
    assert torch.all(x[..., -1] == -1)
    assert padded.decode(x).shape == (RATE,)


def test_decode_length_dtype_and_pitch(domain: AudioDomain):
    x = domain.encode(np.stack([sine(1000.0, 1.0, RATE), sine(250.0, 1.0, RATE, amplitude=0.3)]))
    audio = domain.decode(x)
    assert audio.shape == (2, RATE) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1
    assert abs(peak_frequency(audio[0], RATE) - 1000.0) < 40
    assert abs(peak_frequency(audio[1], RATE) - 250.0) < 40
    rms = np.sqrt(np.mean(audio[0, 2000:-2000] ** 2))
    assert 0.5 * 0.354 < rms < 2 * 0.354, "the level survives the round trip"


def test_decode_peak_normalises_only_what_would_clip(domain: AudioDomain):
    loud = torch.ones(1, *domain.sample_shape)
    quiet = domain.encode(sine(1000.0, 1.0, RATE, amplitude=0.05))
    assert np.abs(domain.decode(loud)).max() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(domain.decode(quiet)).max() < 0.2


def test_decode_is_deterministic_and_batch_independent(domain: AudioDomain):
    x = torch.rand(3, *domain.sample_shape) * 2 - 1
    together = domain.decode(x)
    np.testing.assert_allclose(domain.decode(x[1]), together[1], atol=1e-5)
    np.testing.assert_array_equal(domain.decode(x), together)


def test_decode_rejects_wrong_shape(domain: AudioDomain):
    with pytest.raises(ValueError, match="expected log-mels"):
        domain.decode(torch.zeros(2, 1, 32, 64))


# ----- data ----------------------------------------------------------------------------------


def test_embedded_data_has_ten_classes():
    domain = AudioDomain()
    assert domain.root == DEFAULT_ROOT
    assert domain.num_classes == 10 and domain.class_names == DIGITS
    x, labels = domain.examples()
    assert x.shape == (800, 1, 64, 64) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [80] * 10
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.max()) > 0.5
    train, val = domain.split(labels)
    assert torch.bincount(labels[val]).tolist() == [8] * 10
    assert not set(train.tolist()) & set(val.tolist())


def test_datamodule_batches(domain: AudioDomain):
    module = domain.datamodule(batch_size=2, seed=0)
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (2, 1, 64, 64) and batch["x"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    val_labels = torch.cat([b["label"] for b in module.val_dataloader()])
    assert sorted(val_labels.tolist()) == [0, 1], "one clip of each class held out"
    assert domain.class_names == ["high", "low"]


def test_unconditional_flat_folder(tmp_path: Path):
    for i, frequency in enumerate([300.0, 600.0]):
        sf.write(tmp_path / f"clip{i}.flac", sine(frequency, 0.5, 22050), 22050)
    domain = AudioDomain(root=str(tmp_path), conditional=False, val_fraction=0.0)
    assert domain.num_classes == 0 and domain.class_names is None
    batch = next(iter(domain.datamodule(batch_size=2).train_dataloader()))
    assert set(batch) == {"x"} and batch["x"].shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="no class sub-folders"):
        AudioDomain(root=str(tmp_path), conditional=True)


def test_class_names_must_match_the_folder(tones: Path):
    domain = AudioDomain(root=str(tones), class_names=["low", "high"])
    assert domain.num_classes == 2
    with pytest.raises(ValueError, match="built for"):
        domain.examples()


# ----- bad input -----------------------------------------------------------------------------


def test_empty_file_is_a_clear_error(tones: Path):
    (tones / "low" / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.wav.*empty or corrupt"):
        AudioDomain(root=str(tones)).examples()


def test_corrupt_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "broken.flac"
    path.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"broken\.flac.*empty or corrupt"):
        load_audio(path, RATE)


def test_zero_length_clip_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, np.float32), RATE)
    with pytest.raises(ValueError, match=r"nothing\.wav has no samples"):
        load_audio(path, RATE)


def test_silent_clip_is_skipped_with_a_warning(tones: Path):
    sf.write(tones / "low" / "silence.wav", np.zeros(RATE, np.float32), RATE)
    domain = AudioDomain(root=str(tones))
    with pytest.warns(UserWarning, match=r"skipping silent audio file .*silence\.wav"):
        x, labels = domain.examples()
    assert len(x) == 6 and torch.bincount(labels).tolist() == [3, 3]


def test_class_of_only_silent_clips_is_an_error(tones: Path):
    (tones / "quiet").mkdir()
    sf.write(tones / "quiet" / "silence.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no usable .* \['quiet'\]"):
        AudioDomain(root=str(tones)).examples()


@pytest.mark.parametrize("name", ["song.mp3", "take.aiff"])
def test_unsupported_format_names_the_file_and_the_formats(tones: Path, name: str):
    (tones / "high" / name).write_bytes(b"not audio we can read")
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*supported formats are .wav, .flac, .ogg"):
        AudioDomain(root=str(tones))
    with pytest.raises(ValueError, match="unsupported audio format"):
        load_audio(tones / "high" / name, RATE)


def test_unsupported_file_in_a_flat_folder_is_an_error_not_skipped(tmp_path: Path):
    for i, frequency in enumerate([300.0, 600.0]):
        sf.write(tmp_path / f"clip{i}.wav", sine(frequency, 0.5, RATE), RATE)
    (tmp_path / "song.mp3").write_bytes(b"ID3 an mp3 we do not read")
    with pytest.raises(ValueError, match=r"song[.]mp3.*supported formats are .wav, .flac, .ogg"):
        AudioDomain(root=str(tmp_path), conditional=False)
    (tmp_path / "song.mp3").unlink()
    (tmp_path / ".DS_Store").write_bytes(b"hidden files are not data")
    assert AudioDomain(root=str(tmp_path), conditional=False).num_classes == 0


def test_unsupported_sound_next_to_class_folders_is_an_error(tones: Path):
    (tones / "README.md").write_text("notes are fine next to class folders")
    assert AudioDomain(root=str(tones)).num_classes == 2
    (tones / "extra.m4a").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"loose audio files \(e.g. extra[.]m4a\)"):
        AudioDomain(root=str(tones))


def test_checkpoint_kwargs_rebuild_the_domain_without_its_data(tones: Path, tmp_path: Path):
    kwargs = AudioDomain(root=str(tones)).checkpoint_kwargs()
    assert kwargs == {"class_names": ["high", "low"]}
    rebuilt = AudioDomain(root=str(tmp_path / "elsewhere"), **kwargs)
    assert rebuilt.class_names == ["high", "low"] and rebuilt.num_classes == 2
    flat = AudioDomain(root=str(tmp_path / "elsewhere"), conditional=False, class_names=[])
    assert flat.num_classes == 0


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AudioDomain(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "nowhere.wav", RATE)


def test_empty_class_folder_and_mixed_layout_are_errors(tones: Path):
    (tones / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty'.*has no audio files"):
        AudioDomain(root=str(tones))
    (tones / "empty").rmdir()
    sf.write(tones / "loose.wav", sine(100.0, 0.5, RATE), RATE)
    with pytest.raises(ValueError, match="loose audio files"):
        AudioDomain(root=str(tones))


def test_bad_settings_are_rejected(tones: Path):
    with pytest.raises(ValueError, match="f_max"):
        AudioDomain(root=str(tones), f_max=9000.0)
    with pytest.raises(ValueError, match="min_db"):
        AudioDomain(root=str(tones), min_db=10.0, max_db=0.0)


# ----- network and outputs -------------------------------------------------------------------


def test_config_builds_domain_and_net(tones: Path):
    cfg = OmegaConf.load(CONFIG)
    cfg.domain.root = str(tones)
    domain = hydra.utils.instantiate(cfg.domain, _recursive_=False)
    assert isinstance(domain, AudioDomain) and domain.num_classes == 2
    net = domain.build_net()
    x = torch.randn(2, *domain.sample_shape)
    assert net(x, torch.rand(2), label=torch.tensor([0, 2])).shape == x.shape


def test_save_writes_wavs_pictures_strip_and_npz(domain: AudioDomain, tmp_path: Path):
    net = hydra.utils.instantiate(
        {"_target_": "toolkit.nets.unet.UNet", "base_channels": 8, "channel_mults": [1, 2]},
        in_channels=1,
        num_classes=domain.num_classes,
    )
    sched = schedule.get("cosine")
    labels = torch.tensor([0, 1, 2])  # 2 = the null label: unconditional
    with torch.no_grad():
        x, trajectory = sampler.sample(
            Denoiser(net, sched, prediction="v"),
            shape=(3, *domain.sample_shape),
            schedule=sched,
            method="ddim",
            steps=2,
            seed=[5, 6, 7],
            cond={"label": labels},
            trajectory_every=1,
        )
    paths = domain.save(x, tmp_path / "out", labels, seeds=[5, 6, 7], trajectory=trajectory.x0_hat)
    names = {p.name for p in paths}
    assert {"000_high_seed5.wav", "001_low_seed6.wav", "002_seed7.wav", "000_high_seed5.png"} <= names
    assert {"grid.png", "strip.png", "samples.npz"} <= names
    info = sf.info(tmp_path / "out" / "001_low_seed6.wav")
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (RATE, RATE, 1, "PCM_16")
    saved = np.load(tmp_path / "out" / "samples.npz")
    assert saved["audio"].shape == (3, RATE) and saved["audio"].dtype == np.float32
    assert np.abs(saved["audio"]).max() <= 1 and int(saved["sample_rate"]) == RATE
    assert saved["labels"].tolist() == [0, 1, 2] and saved["seeds"].tolist() == [5, 6, 7]
    wav, _ = sf.read(tmp_path / "out" / "000_high_seed5.wav", dtype="float32")
    np.testing.assert_allclose(wav, saved["audio"][0], atol=1 / 16000)
    with pytest.raises(ValueError, match="one seed per sample"):
        domain.save(x, tmp_path / "again", labels, seeds=[1])
