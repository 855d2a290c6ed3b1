"""Wave -> log-mel -> wave: how much sound survives the audio domain's codec, and how fast.

Held-out clips (the validation split of the default spoken-digit data) are encoded with
`AudioDomain.encode`; the same mel powers are then turned back into sound by our decoder
(torchaudio least-squares mel inversion refined to non-negative least squares by projected
gradient, then Griffin-Lim from zero phase) and by librosa's `feature.inverse.mel_to_audio`
(NNLS mel inversion + Griffin-Lim from random phase), with the
same STFT and mel parameters and the same iteration counts. One row shows our decoder without
its NNLS refinement (torchaudio's InverseMelScale alone). Two reference rows separate the
two losses: the mel inversion with the original phase (mel loss only) and Griffin-Lim on the
original linear magnitudes (phase loss only).

Metrics against the original clip, on linear STFT magnitudes with the domain's n_fft and hop:
spectral convergence ||S - S_hat||_F / ||S||_F (lower is better; 0 = identical) and log-spectral
distance, the mean over frames of the RMS over frequency of 10*log10(P / P_hat) in dB, with
powers floored 80 dB below the clip's loudest bin so that digital silence does not dominate.

    python benchmarks/audio_roundtrip.py [--max-clips 80] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import torch
import torchaudio
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_model  # noqa: E402
from toolkit.domains.audio import AudioDomain  # noqa: E402

ITERATIONS = (16, 32, 64, 128)
LSD_FLOOR_DB = -80.0
RESULT = Path(__file__).resolve().parent / "results" / "audio_roundtrip.md"


def magnitudes(wave: torch.Tensor, domain: AudioDomain) -> torch.Tensor:
    window = torch.hann_window(domain.n_fft, dtype=wave.dtype)
    return torch.stft(wave, domain.n_fft, domain.hop_length, window=window, return_complex=True).abs()


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(torch.linalg.norm(reference - estimate) / torch.linalg.norm(reference))


def log_spectral_distance(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    floor = reference.pow(2).max() * 10 ** (LSD_FLOOR_DB / 10)
    ratio_db = 10 * torch.log10(reference.pow(2).clamp_min(floor) / estimate.pow(2).clamp_min(floor))
    return float(ratio_db.pow(2).mean(dim=0).sqrt().mean())


Decoder = Callable[[torch.Tensor, int], torch.Tensor]


def torch_decoder(iterations: int, nnls_iters: int | None = None) -> Decoder:
    """Our decode, one clip at a time: log-mel `[1, n_mels, frames]` and clip index -> wave."""
    extra = {} if nnls_iters is None else {"nnls_iters": nnls_iters}
    decoder = AudioDomain(griffin_lim_iters=iterations, **extra)
    return lambda x, _: torch.from_numpy(decoder.decode(x))


def librosa_decoder(domain: AudioDomain, iterations: int) -> Decoder:
    def decode(x: torch.Tensor, _: int) -> torch.Tensor:
        np.random.seed(0)
        wave = librosa.feature.inverse.mel_to_audio(
            domain.mel_power(x)[0].numpy(),
            sr=domain.sample_rate,
            n_fft=domain.n_fft,
            hop_length=domain.hop_length,
            power=2.0,
            n_iter=iterations,
            length=domain.clip_samples,
            fmin=domain.f_min,
            fmax=domain.f_max,
            htk=False,
            norm="slaney",
        )
        return torch.from_numpy(wave)

    return decode


def original_phase_decoder(domain: AudioDomain, clips: torch.Tensor) -> Decoder:
    """Mel inversion only: our non-negative least-squares magnitudes with the original clip's phase."""
    window = torch.hann_window(domain.n_fft)

    def decode(x: torch.Tensor, index: int) -> torch.Tensor:
        magnitude = domain.linear_power(domain.mel_power(x))[0].sqrt()
        phase = torch.stft(clips[index], domain.n_fft, domain.hop_length, window=window, return_complex=True)
        spectrum = torch.polar(magnitude, phase.angle())
        return torch.istft(spectrum, domain.n_fft, domain.hop_length, window=window, length=domain.clip_samples)

    return decode


def linear_griffin_lim_decoder(domain: AudioDomain, clips: torch.Tensor, iterations: int) -> Decoder:
    """Phase retrieval only: Griffin-Lim on the original clip's linear STFT magnitudes."""
    griffin_lim = torchaudio.transforms.GriffinLim(
        domain.n_fft,
        iterations,
        hop_length=domain.hop_length,
        power=1.0,
        length=domain.clip_samples,
        rand_init=False,
    )
    return lambda _, index: griffin_lim(magnitudes(clips[index], domain))


def evaluate(decode: Decoder, clips: torch.Tensor, codes: torch.Tensor, domain: AudioDomain) -> dict:
    scs, lsds, seconds = [], [], []
    for index, (wave, x) in enumerate(zip(clips, codes, strict=True)):
        start = time.perf_counter()
        estimate = decode(x, index)
        seconds.append(time.perf_counter() - start)
        reference, rebuilt = magnitudes(wave, domain), magnitudes(estimate.float(), domain)
        scs.append(spectral_convergence(reference, rebuilt))
        lsds.append(log_spectral_distance(reference, rebuilt))
    return {
        "sc": float(np.mean(scs)),
        "sc_sd": float(np.std(scs)),
        "lsd": float(np.mean(lsds)),
        "lsd_sd": float(np.std(lsds)),
        "ms": 1000 * float(np.median(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-clips", type=int, default=80, help="held-out clips to use (at most)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for both decoders")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    domain = AudioDomain()
    waves, labels, _ = domain.load_clips()
    _, held_out = domain.split(labels)
    held_out = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))]
    clips = waves[held_out[: args.max_clips]]
    codes = domain.encode(clips)

    rows = []
    with threadpool_limits(limits=args.threads), torch.no_grad():
        for iterations in ITERATIONS:
            for name, decoder in (
                ("ours (torchaudio)", torch_decoder(iterations)),
                ("librosa mel_to_audio", librosa_decoder(domain, iterations)),
            ):
                result = evaluate(decoder, clips, codes, domain)
                rows.append((name, str(iterations), result))
                print(
                    f"{name:24s} {iterations:4d} it: SC {result['sc']:.3f}  LSD {result['lsd']:.2f} dB  "
                    f"{result['ms']:.0f} ms/clip",
                    flush=True,
                )
        references = (
            ("ours without NNLS refinement (nnls_iters=0)", "64", torch_decoder(64, nnls_iters=0)),
            ("reference: our mel inversion + original phase", "-", original_phase_decoder(domain, clips)),
            (
                "reference: Griffin-Lim on linear magnitudes",
                "64",
                linear_griffin_lim_decoder(domain, clips, 64),
            ),
        )
        for name, iterations, decoder in references:
            rows.append((name, iterations, evaluate(decoder, clips, codes, domain)))

    table = [
        "| decoder | GL iterations | spectral convergence ↓ | log-spectral distance (dB) ↓ | time per clip (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, iterations, r in rows:
        table.append(
            f"| {name} | {iterations} | {r['sc']:.3f} ± {r['sc_sd']:.3f} | {r['lsd']:.2f} ± {r['lsd_sd']:.2f} "
            f"| {r['ms']:.0f} |"
        )
    machine = (
        f"{os.cpu_count()} CPUs ({cpu_model()}), {args.threads} thread(s) per decoder; "
        f"Python {platform.python_version()}, torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
        f"librosa {librosa.__version__}; load average {os.getloadavg()[0]:.1f} at the end (shared machine: "
        "times are indicative)"
    )
    settings = (
        f"{len(clips)} held-out clips of the spoken-digit data ({domain.clip_samples} samples at "
        f"{domain.sample_rate} Hz); n_fft {domain.n_fft}, hop {domain.hop_length}, {domain.n_mels} Slaney mels "
        f"{domain.f_min:g}-{domain.f_max:g} Hz, log floor {domain.min_db:g} dB"
    )
    report = "\n".join(
        [
            "# Audio codec round trip (wave -> log-mel -> wave)",
            "",
            f"Produced by `python benchmarks/audio_roundtrip.py` on {time.strftime('%Y-%m-%d')}.",
            "",
            f"- Data: {settings}.",
            f"- Machine: {machine}.",
            "- Metrics against the original clip's linear STFT magnitudes (mean ± sd over clips): spectral "
            "convergence ||S - S_hat||_F / ||S||_F; log-spectral distance = mean over frames of the RMS over "
            f"frequency of 10 log10(P / P_hat), powers floored {-LSD_FLOOR_DB:g} dB below the clip's loudest bin. "
            "Time: median wall time of one clip's decode.",
            f"- ours: torchaudio InverseMelScale (least squares) refined by {domain.nnls_iters} projected-gradient "
            "NNLS steps + torchaudio GriffinLim from zero phase (momentum 0.99). "
            "librosa: NNLS mel inversion + griffinlim from random phase (momentum 0.99, seed 0).",
            "",
            *table,
            "",
        ]
    )
    print("\n" + "\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
