"""Audio domain: short sound clips as log-mel spectrograms, a 2D UNet over them, Griffin-Lim back.

Model space is a log-mel image `[1, n_mels, frames]` in [-1, 1]: mel power `P` (Slaney mel
scale and filter normalisation, as librosa's defaults) is turned into decibels
`10 * log10(max(P, 10 ** (min_db / 10)))` and mapped linearly from `[min_db, max_db]` onto
`[-1, 1]`. The constants are fixed (not fitted to the data) so that loudness keeps its meaning
across data sets: with the defaults, -1 is the log floor (-70 dB, silence) and +1 is 30 dB,
about the peak mel power of a full-scale sine (speech peaks at 5 to 26 dB in the shipped data).
Louder bins are clipped to +1.

Decoding inverts the mel filterbank by non-negative least squares (torchaudio's least squares,
refined by projected gradient) and recovers a phase with Griffin-Lim started from zero phase,
so the same spectrogram always decodes to the same waveform whatever else is in the batch.

Files are read with soundfile (WAV, FLAC, OGG), mixed to mono, resampled to the configured
rate, and padded with silence or cropped (keeping the start) to the clip length. Sub-folders of
the data root are the classes, in sorted order. Clips that are all zeros are skipped with a
warning: they carry no class information and would teach the model silence.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from toolkit import viz
from toolkit.domains.base import Domain
from toolkit.domains.captions import captions_of
from toolkit.domains.data import (
    TensorDictDataModule,
    check_class_names,
    check_val_fraction,
    keep_captioned,
    scan_class_folders,
    split_indices,
)
from toolkit.resources import resource_dir, torchaudio_load_error

try:
    import torchaudio.functional as AF
    import torchaudio.transforms as T
except (ImportError, OSError) as error:  # a torch/torchaudio mismatch fails here with an undefined symbol
    raise torchaudio_load_error(error) from error

SUPPORTED_SUFFIXES = (".wav", ".flac", ".ogg")
FRAME_MULTIPLE = 8
DEFAULT_ROOT = resource_dir("data") / "audio" / "spoken_digits"
ENCODE_CHUNK = 64
COLOUR_MAP = "magma"
PICTURE_SCALE = 4


def check_format(path: Path) -> None:
    """ValueError naming the file and the supported formats unless it is WAV, FLAC or OGG."""
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported audio format '{path.suffix or '(no extension)'}' for {path}; "
            f"supported formats are {', '.join(SUPPORTED_SUFFIXES)} (convert it, e.g. with sox or ffmpeg, "
            "or move it out of the data folder)"
        )


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read one sound file as float32 mono at `sample_rate` (channels averaged, resampled)."""
    path = Path(path)
    check_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.SoundFileError as error:
        raise ValueError(f"cannot read audio file {path}: the file is empty or corrupt ({error})") from error
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} has no samples (zero-length clip); remove or re-record it")
    if not np.isfinite(data).all():
        raise ValueError(f"audio file {path} contains NaN or infinite samples")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return mono


def fit_length(wave: Tensor, length: int) -> Tensor:
    """Pad with silence at the end or crop the end so the last axis has `length` samples."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return nn.functional.pad(wave, (0, length - wave.shape[-1]))


def fit_frames(x: Tensor, frames: int, silence: float) -> Tensor:
    """Crop the last (time) axis to `frames`, or pad it with the value of silence."""
    if x.shape[-1] >= frames:
        return x[..., :frames]
    return nn.functional.pad(x, (0, frames - x.shape[-1]), value=silence)


class AudioDomain(Domain):
    """Clips of `clip_seconds` at `sample_rate` as `[1, n_mels, frames]` log-mel images.

    `frames` is the STFT frame count `1 + samples // hop_length` rounded to a multiple of 8 (the
    UNet halves the resolution up to three times); the defaults give exactly 64. `net` is the
    Hydra config of the denoiser; `build_net` adds `in_channels=1` and `num_classes`.

    A folder with a metadata file is captioned (``toolkit.domains.captions``) and needs `text_encoder`;
    the shipped spoken digits carry captions (data/audio/make_captions.py) that are used only when
    `text_encoder` is set, so that they serve label training as before.
    """

    name = "audio"

    def __init__(
        self,
        root: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        n_fft: int = 1024,
        hop_length: int = 252,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        min_db: float = -70.0,
        max_db: float = 30.0,
        griffin_lim_iters: int = 64,
        nnls_iters: int = 100,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        conditional: bool = True,
        class_names: list[str] | None = None,
        net: dict[str, Any] | DictConfig | None = None,
        text_encoder: dict | None = None,
    ):
        f_max = sample_rate / 2 if f_max is None else float(f_max)
        if sample_rate <= 0 or clip_seconds <= 0:
            raise ValueError(f"sample_rate and clip_seconds must be positive, got {sample_rate}, {clip_seconds}")
        if not 0 < hop_length <= n_fft:
            raise ValueError(f"hop_length must be in (0, n_fft={n_fft}], got {hop_length}")
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
        if min_db >= max_db:
            raise ValueError(f"min_db must be below max_db, got {min_db} >= {max_db}")
        if griffin_lim_iters < 1 or nnls_iters < 0:
            raise ValueError(f"need griffin_lim_iters >= 1 and nnls_iters >= 0, got {griffin_lim_iters}, {nnls_iters}")
        check_val_fraction(val_fraction)

        self.root = Path(root).expanduser() if root is not None else DEFAULT_ROOT
        self.sample_rate = int(sample_rate)
        self.clip_samples = round(clip_seconds * sample_rate)
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.f_min, self.f_max = float(f_min), f_max
        self.min_db, self.max_db = float(min_db), float(max_db)
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.conditional = conditional
        self.net_cfg = net
        self.text_encoder = None if text_encoder is None else dict(text_encoder)

        self.stft_frames = 1 + self.clip_samples // hop_length
        self.frames = FRAME_MULTIPLE * max(1, round(self.stft_frames / FRAME_MULTIPLE))
        self.sample_shape = (1, n_mels, self.frames)

        mel_args = dict(sample_rate=self.sample_rate, f_min=self.f_min, f_max=f_max, norm="slaney", mel_scale="slaney")
        self.mel = T.MelSpectrogram(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0, **mel_args)
        self.inverse_mel = T.InverseMelScale(n_stft=n_fft // 2 + 1, n_mels=n_mels, **mel_args)
        self.mel_filters = self.inverse_mel.fb.T.contiguous()
        self.nnls_iters = nnls_iters
        self.nnls_step = 1.0 / float(torch.linalg.matrix_norm(self.mel_filters, ord=2) ** 2)
        self.griffin_lim = T.GriffinLim(
            n_fft=n_fft,
            n_iter=griffin_lim_iters,
            hop_length=hop_length,
            power=2.0,
            length=self.clip_samples,
            rand_init=False,
        )

        names = self.find_files()[2] if class_names is None else list(class_names)
        self.expected_class_names = class_names
        self.class_names = names if conditional else None
        self.num_classes = len(names) if conditional else 0
        self._examples: tuple[Tensor, Tensor] | None = None
        self.captions: list[str] | None = None  # one per clip of `load_clips` when the folder is captioned

    def checkpoint_kwargs(self) -> dict:
        """The class names ([] when unconditional), so that a checkpoint samples without the data."""
        return {"class_names": list(self.class_names or [])}

    # ----- codec -----------------------------------------------------------------------------

    def encode(self, wave: Tensor | np.ndarray) -> Tensor:
        """Waveform `[samples]` or `[B, samples]` -> log-mel `[1, n_mels, frames]` (or `[B, 1, n_mels,
        frames]`) in [-1, 1]; clips are first padded with silence or cropped to the clip length."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        power = self.mel(fit_length(wave, self.clip_samples))
        db = 10 * torch.log10(power.clamp_min(10 ** (self.min_db / 10)))
        x = (2 * (db - self.min_db) / (self.max_db - self.min_db) - 1).clamp(-1, 1)
        x = fit_frames(x, self.frames, silence=-1.0)
        return x.unsqueeze(-3)

    def decode(self, x: Tensor) -> np.ndarray:
        """Log-mel `[B, 1, n_mels, frames]` (or one `[1, n_mels, frames]`) -> float32 waveforms
        `[B, samples]` in [-1, 1]. A clip whose peak would exceed 1 is scaled down to peak 1;
        others keep their level."""
        x = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
        if x.ndim not in (3, 4) or tuple(x.shape[-3:]) != self.sample_shape:
            raise ValueError(f"expected log-mels [B, *{self.sample_shape}], got shape {tuple(x.shape)}")
        single = x.ndim == 3
        with torch.no_grad():
            wave = self.griffin_lim(self.linear_power(self.mel_power(x)))
        peak = wave.abs().amax(dim=-1, keepdim=True)
        wave = wave / peak.clamp_min(1.0)
        audio = wave.numpy().astype(np.float32)
        return audio[0] if single else audio

    def mel_power(self, x: Tensor) -> Tensor:
        """Log-mel `[B, 1, n_mels, frames]` -> the mel power `[B, n_mels, stft_frames]` it stands for
        (values outside [-1, 1] clipped; frames added for padding are dropped again)."""
        db = (x.reshape(-1, *self.sample_shape)[:, 0].clamp(-1, 1) + 1) / 2 * (self.max_db - self.min_db)
        return fit_frames(10 ** ((db + self.min_db) / 10), self.stft_frames, silence=10 ** (self.min_db / 10))

    def linear_power(self, mel_power: Tensor) -> Tensor:
        """Mel power `[B, n_mels, T]` -> linear STFT power `[B, n_fft // 2 + 1, T]`: the non-negative
        least-squares inverse of the mel filterbank. torchaudio's least-squares solution (negatives
        set to zero) is refined by `nnls_iters` steps of accelerated projected gradient (FISTA);
        on the spoken digits this lowers the round trip's spectral convergence from 0.53 to 0.39
        (benchmarks/results/audio_roundtrip.md)."""
        filters = self.mel_filters
        x = self.inverse_mel(mel_power)
        y, momentum = x, 1.0
        for _ in range(self.nnls_iters):
            x_next = (y - self.nnls_step * (filters.T @ (filters @ y - mel_power))).clamp_min(0)
            momentum_next = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            y = x_next + (momentum - 1) / momentum_next * (x_next - x)
            x, momentum = x_next, momentum_next
        return x

    # ----- data ------------------------------------------------------------------------------

    def find_files(self) -> tuple[list[Path], list[int], list[str]]:
        """The sound files, their labels and the class names: one sub-folder per class, or (only
        when unconditional) all files directly in the folder."""
        return scan_class_folders(self.root, SUPPORTED_SUFFIXES, self.conditional, what="audio files")

    def caption_map(self, files: list[Path]) -> dict[Path, str] | None:
        """The caption of each of `files` to train on (held-out files left out); None when uncaptioned."""
        shipped = self.root.resolve() == DEFAULT_ROOT.resolve()
        return captions_of(self.root, files, self.text_encoder, self.name, "audio files", optional=shipped)

    def load_clips(self) -> tuple[Tensor, Tensor, list[Path]]:
        """All usable clips `[N, samples]` with their labels and paths (of a captioned folder, those
        with captions); silent clips are skipped with a warning, and a class left without clips is
        an error."""
        files, file_labels, names = self.find_files()
        if self.conditional and self.expected_class_names is not None:
            check_class_names(self.root, names, self.class_names)
        captions = self.caption_map(files)
        files, file_labels, _ = keep_captioned(files, file_labels, captions)
        waves, labels, paths = [], [], []
        for path, label in zip(files, file_labels, strict=True):
            wave = load_audio(path, self.sample_rate)
            if not np.any(wave):
                warnings.warn(f"skipping silent audio file {path} (every sample is zero)", stacklevel=2)
                continue
            waves.append(fit_length(torch.from_numpy(wave), self.clip_samples))
            labels.append(label)
            paths.append(path)
        self.captions = None if captions is None else [captions[path] for path in paths]
        labels = torch.tensor(labels, dtype=torch.long)
        empty = [names[i] for i in range(len(names)) if not (labels == i).any()]
        if empty:
            raise ValueError(f"no usable (non-silent) clips in class folder(s) {empty} of {self.root}")
        return torch.stack(waves), labels, paths

    def examples(self) -> tuple[Tensor, Tensor]:
        """Spectrograms `[N, 1, n_mels, frames]` and labels of the whole data set, computed once."""
        if self._examples is None:
            waves, labels, _ = self.load_clips()
            x = torch.cat([self.encode(chunk) for chunk in waves.split(ENCODE_CHUNK)])
            self._examples = (x, labels)
        return self._examples

    def split(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Train and validation indices (stratified by class, seeded by `split_seed`)."""
        return split_indices(len(labels), self.val_fraction, self.split_seed, labels=labels)

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> TensorDictDataModule:
        x, labels = self.examples()
        tokens = None if self.captions is None else self.tokenize(self.captions)

        def rows(index: Tensor) -> dict[str, Tensor]:
            batch = {"x": x[index], "label": labels[index]} if self.conditional else {"x": x[index]}
            if tokens is not None:
                batch["tokens"] = tokens[index]
            return batch

        train, val = self.split(labels)
        return TensorDictDataModule(rows(train), rows(val), batch_size, num_workers, seed)

    def build_net(self) -> nn.Module:
        sizes = {"n_mels": self.n_mels, "frames": self.frames}
        return self.build_net_from(self.net_cfg, sizes, in_channels=1, num_classes=self.num_classes)

    # ----- output ----------------------------------------------------------------------------

    picture_scale = 2

    def pictures(self, x: Tensor) -> np.ndarray:
        """Log-mel `[B, 1, n_mels, frames]` -> RGB pictures `[B, n_mels, frames, 3]` in [0, 1]
        (magma colour map: dark = quiet), low frequencies at the bottom."""
        values = (x.detach().float().cpu().reshape(-1, *self.sample_shape)[:, 0].clamp(-1, 1) + 1) / 2
        return matplotlib.colormaps[COLOUR_MAP](values.flip(-2).numpy())[..., :3].astype(np.float32)

    def write_sample(self, out_dir: Path, stem: str, data: np.ndarray, picture: np.ndarray) -> list[Path]:
        """A 16-bit WAV and a spectrogram PNG."""
        wav_path = out_dir / f"{stem}.wav"
        sf.write(wav_path, data, self.sample_rate, subtype="PCM_16")
        return [wav_path, viz.save_png(picture, out_dir / f"{stem}.png", scale=PICTURE_SCALE)]

    def sample_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        """``audio`` [n, samples] float32 in [-1, 1] and ``sample_rate``."""
        return {"audio": data, "sample_rate": np.int64(self.sample_rate)}
