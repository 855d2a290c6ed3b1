"""PyPOTS' CSDI as an outside peer for the time-series imputation benchmark.

``pypots_csdi`` trains ``pypots.imputation.CSDI`` (Tashiro et al. 2021, as implemented by PyPOTS) on windows
with missing values and draws ``n_samples`` imputations of each test window, so our CSDI can be compared
with an independent implementation of the same model under the same sizes and budgets.

PyPOTS is optional (``pip install -e ".[bench-ts]" --only-binary tokenizers``) and pulls in its own
dependency tree (transformers, tsdb, ai4ts, ...), so it is imported only when the peer runs. Facts of
PyPOTS 1.5 this relies on:

- Training hides part of each training window's observed values itself (``target_strategy="random"``: a
  ratio drawn uniformly from [0, 1) per window per epoch) and fits the noise on the hidden entries only.
  Without a validation set it keeps the weights of the epoch with the lowest mean training loss.
- ``predict(..., n_sampling_times=n)`` returns ``{"imputation": [M, n, L, K]}``: every one of the ``n``
  reverse-diffusion draws, with the observed entries (in float32) put back.
- ``pypots.utils.random.set_random_seed`` seeds ``random``, NumPy and torch, which covers the weight
  initialisation, the training masks and noise, the batch order and the sampling noise.
- PyPOTS does not normalise the data (the CSDI paper's code standardises each variable), so by default the
  peer standardises each channel with the mean and std of its observed training values, as
  ``toolkit.domains.timeseries.Normalizer`` does for our model, and maps the draws back.
- PyPOTS does not limit torch's threads itself, so the call runs on one thread and restores the previous
  count afterwards.

PyPOTS trains for a number of epochs whatever the time it takes (macrodata's run had not finished after 45
minutes). Two limits keep a benchmark in time: ``fit_seconds`` ends the peer's training at the first
iteration past that many seconds once an epoch has finished (through PyPOTS' own interrupt path, which keeps
the weights of the best finished epoch), and the peer then samples as usual, reporting the iterations it
reached; ``CappedCall`` starts the whole call in a separate process (so that the benchmark trains its own model
meanwhile) that is stopped at a hard time cap, which then raises ``PeerStopped`` for the benchmark to report
instead of waiting.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
from collections.abc import Callable

import numpy as np

INSTALL_HINT = 'pip install -e ".[bench-ts]" --only-binary tokenizers'


class PeerStopped(RuntimeError):
    """A peer ran past its time cap and its process was stopped; ``seconds`` is the cap."""

    def __init__(self, seconds: float):
        super().__init__(f"stopped at {seconds:.0f} s (time cap)")
        self.seconds = seconds


def _call_and_send(connection, function: Callable, args: tuple, kwargs: dict) -> None:
    """In the capped process: send back ``(True, result)`` or ``(False, the exception raised)``."""
    try:
        outcome = (True, function(*args, **kwargs))
    except Exception as error:  # handed to the caller, who raises it
        outcome = (False, error)
    connection.send(outcome)


class CappedCall:
    """``function(*args, **kwargs)`` started at once in a fresh (spawned) process, so that the caller can work
    meanwhile; ``result()`` waits for it until ``cap_seconds`` after the start (None: as long as it takes) and
    then stops it, which raises ``PeerStopped``; its exceptions come back as they are. ``function`` must be
    importable by name in the new process (a module-level function of an importable module) and its arguments
    picklable; a script that starts one needs the ``if __name__ == "__main__":`` guard spawned processes
    require."""

    def __init__(self, function: Callable, cap_seconds: float | None, *args, **kwargs):
        if cap_seconds is not None and not cap_seconds > 0:
            raise ValueError(f"cap_seconds must be a positive number of seconds or None (no cap), got {cap_seconds}")
        self.name = function.__name__
        self.cap_seconds = cap_seconds
        context = multiprocessing.get_context("spawn")
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_call_and_send, args=(sender, function, args, kwargs), daemon=True)
        self._start = time.monotonic()
        self._process.start()
        sender.close()

    def result(self):
        remaining = None if self.cap_seconds is None else max(0.0, self.cap_seconds - (time.monotonic() - self._start))
        try:
            if not self._receiver.poll(remaining):
                raise PeerStopped(self.cap_seconds)
            succeeded, value = self._receiver.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(
                f"the process running {self.name} ended without a result (exit code {self._process.exitcode})"
            ) from None
        finally:
            self._receiver.close()
            if self._process.is_alive():
                self._process.terminate()
            self._process.join()
        if not succeeded:
            raise value
        return value


def require_pypots() -> None:
    """ImportError that says how to install PyPOTS when it is missing, before a process is started for it."""
    import importlib.util

    if importlib.util.find_spec("pypots") is None:
        raise ImportError(f"the PyPOTS CSDI peer needs the optional package pypots; install it: `{INSTALL_HINT}`")


def _import_pypots():
    """Import PyPOTS with its import-time banner (printed by its ``ai4ts`` dependency) sent to stderr, so
    that a benchmark writing results to stdout stays parseable."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import pypots
            from pypots.imputation import CSDI
            from pypots.optim import Adam
            from pypots.utils.random import set_random_seed
    except ImportError as error:
        raise ImportError(
            f"the PyPOTS CSDI peer needs the optional package pypots ({error}); install it: `{INSTALL_HINT}`"
        ) from error
    return pypots, CSDI, Adam, set_random_seed


def _check_windows(name: str, windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 3 or min(windows.shape) == 0:
        raise ValueError(f"{name} must be a non-empty array of windows [N, L, K], got shape {windows.shape}")
    if not np.issubdtype(windows.dtype, np.floating):
        raise ValueError(f"{name} must be a float array with NaN = missing, got dtype {windows.dtype}")
    if np.isinf(windows).any():
        raise ValueError(f"{name} contains inf; mark missing values with NaN and keep observed values finite")
    return windows


def _channel_moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each channel's observed training values; a zero std becomes 1."""
    mean = np.nanmean(train, axis=(0, 1), dtype=np.float64)
    std = np.nanstd(train, axis=(0, 1), dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def pypots_csdi(
    train: np.ndarray,
    test: np.ndarray,
    *,
    epochs: int,
    n_samples: int,
    seed: int = 0,
    batch_size: int = 32,
    channels: int = 64,
    layers: int = 4,
    heads: int = 4,
    time_emb_dim: int = 128,
    feature_emb_dim: int = 16,
    diffusion_emb_dim: int = 128,
    n_diffusion_steps: int = 50,
    lr: float = 1e-3,
    standardize: bool = True,
    fit_seconds: float | None = None,
) -> dict:
    """Train PyPOTS' CSDI on ``train`` and draw ``n_samples`` imputations of ``test``.

    train: [N, L, K] float windows with NaN = missing (PyPOTS trains by hiding part of the observed values
    itself); test: [M, L, K] with NaN where values are to be imputed (observed values are kept).
    Returns {"samples": ndarray [n_samples, M, L, K] in test's dtype (observed entries equal to the input),
    "fit_seconds": float, "predict_seconds": float, "version": pypots.__version__, "iterations": training
    iterations run, "planned_iterations": those of ``epochs`` epochs, "budget_stopped": whether ``fit_seconds``
    ended the training, "best_epoch": the finished epoch whose weights sample}.
    ``fit_seconds``: a training time budget (None: all ``epochs``); see the module docstring.
    ``standardize``: fit and sample in per-channel standardised units (train's observed mean and std); the
    draws come back in the input's units either way.
    """
    train = _check_windows("train", train)
    test = _check_windows("test", test)
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"train windows {train.shape[1:]} and test windows {test.shape[1:]} must share [L, K] "
            "(window length and number of channels)"
        )
    unobserved_channels = np.flatnonzero(np.isnan(train).all(axis=(0, 1)))
    if unobserved_channels.size:
        raise ValueError(
            f"train channels {unobserved_channels.tolist()} have no observed value (all NaN); "
            "CSDI learns each channel from its observed values"
        )
    for name, value in {"epochs": epochs, "n_samples": n_samples, "batch_size": batch_size}.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if channels % heads:
        raise ValueError(f"channels ({channels}) must be divisible by heads ({heads}) for attention")
    if fit_seconds is not None and not fit_seconds > 0:
        raise ValueError(f"fit_seconds must be a positive number of seconds or None (no budget), got {fit_seconds}")

    mean, std = _channel_moments(train) if standardize else (0.0, 1.0)
    pypots, CSDI, Adam, set_random_seed = _import_pypots()
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_random_seed(seed)
        model = CSDI(
            n_steps=train.shape[1],
            n_features=train.shape[2],
            n_layers=layers,
            n_heads=heads,
            n_channels=channels,
            d_time_embedding=time_emb_dim,
            d_feature_embedding=feature_emb_dim,
            d_diffusion_embedding=diffusion_emb_dim,
            n_diffusion_steps=n_diffusion_steps,
            batch_size=batch_size,
            epochs=epochs,
            optimizer=Adam(lr=lr),
            device="cpu",
            saving_path=None,
            model_saving_strategy=None,
            verbose=False,
        )
        budget = _TrainingBudget(model, fit_seconds)
        model.fit({"X": ((train - mean) / std).astype(np.float32)})
        fit_seconds = time.perf_counter() - budget.start

        scaled_test = ((test - mean) / std).astype(np.float32)
        start = time.perf_counter()
        draws = model.predict({"X": scaled_test}, n_sampling_times=n_samples)["imputation"]
        predict_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)

    expected = (test.shape[0], n_samples, *test.shape[1:])
    if draws.shape != expected:
        raise RuntimeError(f"PyPOTS {pypots.__version__} returned imputations {draws.shape}, not {expected}")
    samples = (np.swapaxes(draws, 0, 1) * std + mean).astype(test.dtype)
    observed = ~np.isnan(test)
    samples = np.where(observed[None], test[None], samples)
    return {
        "samples": samples,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "version": pypots.__version__,
        "iterations": budget.iterations,
        "planned_iterations": epochs * -(-train.shape[0] // batch_size),
        "budget_stopped": budget.stopped,
        "best_epoch": int(model.best_epoch),
    }


class _TrainingBudget:
    """Counts a PyPOTS model's training iterations and, past ``seconds`` (None: never), ends its training by
    raising KeyboardInterrupt from the optimiser's step once an epoch has finished: PyPOTS' training loop
    treats that as a user's interrupt and keeps the weights of its best finished epoch."""

    def __init__(self, model, seconds: float | None):
        self.model = model
        self.seconds = seconds
        self.iterations = 0
        self.stopped = False
        self._step = model.optimizer.step
        model.optimizer.step = self.step
        self.start = time.perf_counter()

    def step(self, closure=None):
        self._step(closure)
        self.iterations += 1
        past_budget = self.seconds is not None and time.perf_counter() - self.start > self.seconds
        if past_budget and self.model.best_model_dict is not None:
            self.stopped = True
            raise KeyboardInterrupt
