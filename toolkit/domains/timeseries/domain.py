"""The time-series domain: window datasets, the CSDI-style training batch, the per-window offset
around the denoiser, and the files and plots it writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from toolkit.core.denoiser import append_dims
from toolkit.domains.base import GRID_FILE, SAMPLES_FILE, STRIP_FILE, Domain, TrainingBatch
from toolkit.domains.data import ResumableLoader
from toolkit.domains.timeseries.masks import TrainingMasker, block_hidden
from toolkit.domains.timeseries.reading import SeriesSet, read_series, split_by_time
from toolkit.domains.timeseries.sources import (
    INTEREST_INFLATION_COLUMNS,
    MACRODATA_COLUMNS,
    co2_frame,
    interest_inflation_frame,
    macrodata_frame,
    synthetic_frames,
)
from toolkit.domains.timeseries.windows import Normalizer, Windows, make_windows, to_model_space, window_offset

SOURCES = ("co2", "macrodata", "interest_inflation", "synthetic", "path")
TABLE_SOURCES = {  # embedded tables whose ``columns`` option picks some of their series
    "macrodata": (macrodata_frame, MACRODATA_COLUMNS),
    "interest_inflation": (interest_inflation_frame, INTEREST_INFLATION_COLUMNS),
}


class WindowDataset(Dataset):
    """Model-space windows as dicts: ``x`` [K, L], ``mask`` [K, L] (``observed``), ``time_pos`` [L]."""

    def __init__(self, windows: Windows, normalizer: Normalizer):
        self.x, self.observed = to_model_space(windows.values, normalizer)
        self.time_pos = torch.as_tensor(windows.time_pos, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "mask": self.observed[i], "time_pos": self.time_pos[i]}


class WindowDataModule(L.LightningDataModule):
    def __init__(self, train: WindowDataset, val: WindowDataset, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


class OffsetDenoiser:
    """The denoiser with each window centred on its ``offset`` (a conditioning key: the mean of its
    given values, ``window_offset``): the network sees data minus the offset, whose noisy version is
    ``x_t - alpha * offset``, as in training (``TimeSeriesDomain.training_batch``), while the sampler
    works in data space; so the model meets only centred values, wherever the data's level lies.
    ``denoiser``: a ``toolkit.core.denoiser.Denoiser``, whose schedule gives alpha."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def __call__(self, x_t: Tensor, t: Tensor, offset: Tensor | None = None, **cond) -> Tensor:
        if offset is None:
            return self.denoiser(x_t, t, **cond)
        alpha, _ = self.denoiser.schedule.alpha_sigma(t.to(x_t.dtype))
        return self.denoiser(x_t - append_dims(alpha, x_t.ndim) * offset, t, **cond) + offset


class TimeSeriesDomain(Domain):
    """Imputation of multivariate series: windows [K, L], CSDI-style conditional denoiser trained
    to recover hidden observed values from the others (see the package docstring for data rules)."""

    name = "timeseries"
    num_classes = 0

    def __init__(
        self,
        net: Mapping,
        source: str = "co2",
        path: str | list[str] | None = None,
        time_column: str | None = None,
        series_column: str | None = None,
        columns: list[str] | None = None,
        window: int = 64,
        stride: int = 8,
        val_fraction: float = 0.2,
        training_mask: Mapping[str, float] | str = "random",
        block_length: Sequence[int] = (4, 16),
        synthetic: Mapping | None = None,
        normalizer: Mapping | None = None,
    ):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        if source == "path" and not path:
            raise ValueError("source 'path' needs path: a CSV/Parquet file, a folder of them, or a list of files")
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
        self.net_cfg = net
        self.source, self.path = source, path
        self.read_options = {"time_column": time_column, "series_column": series_column, "columns": columns}
        self.window, self.stride, self.val_fraction = int(window), int(stride), float(val_fraction)
        self.masker = TrainingMasker(training_mask, block_length)
        self.synthetic = dict(synthetic or {})
        self._data: tuple[SeriesSet, SeriesSet] | None = None
        if normalizer is not None:
            self.normalizer = Normalizer.from_dict(normalizer)
        else:
            self.normalizer = Normalizer.fit(self.splits()[0], window=self.window)
        self.columns = self.normalizer.columns
        self.sample_shape = (len(self.columns), self.window)

    # -- data

    def raw_data(self):
        """What ``read_series`` reads for the configured source."""
        if self.source == "co2":
            return co2_frame()
        if self.source in TABLE_SOURCES:
            frame, all_columns = TABLE_SOURCES[self.source]
            return frame(self.read_options["columns"] or all_columns)
        if self.source == "synthetic":
            return synthetic_frames(**self.synthetic)[0]
        return self.path if isinstance(self.path, (str, Path)) else [str(p) for p in self.path]

    def splits(self) -> tuple[SeriesSet, SeriesSet]:
        """(training, validation) series, read once."""
        if self._data is None:
            options = dict(self.read_options)
            if self.source in TABLE_SOURCES:
                options["columns"] = None
            self._data = split_by_time(read_series(self.raw_data(), **options), self.val_fraction)
        return self._data

    def datamodule(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> WindowDataModule:
        train, val = self.splits()
        if train.columns != self.columns:
            raise ValueError(f"data columns {train.columns} differ from the normalizer's {self.columns}")
        return WindowDataModule(
            WindowDataset(make_windows(train, self.window, self.stride), self.normalizer),
            WindowDataset(make_windows(val, self.window, self.stride), self.normalizer),
            batch_size,
            num_workers,
            seed,
        )

    def checkpoint_kwargs(self) -> dict:
        """Constructor kwargs (plain types) to store in checkpoints beside the configured ones, so
        that the domain is rebuilt without reading its data: the fitted normaliser."""
        return {"normalizer": self.normalizer.to_dict()}

    # -- model

    def build_net(self) -> nn.Module:
        return instantiate(self.net_cfg, num_features=len(self.columns))

    def training_batch(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> TrainingBatch:
        """Hide some observed values; the rest are given; the loss counts the hidden ones only.
        Each window is centred on the mean of its given values (``window_offset``), as
        ``OffsetDenoiser`` does at sampling time, so the network learns shapes, not levels."""
        x = batch["x"]
        observed = batch["mask"] > 0
        hidden = self.masker(observed, generator)
        given = (observed & ~hidden).to(x.dtype)
        centred = (x - window_offset(x, given)) * observed.to(x.dtype)
        cond = {"cond_values": centred * given, "cond_mask": given}
        if "time_pos" in batch:
            cond["time_pos"] = batch["time_pos"]
        return TrainingBatch(x=centred, cond=cond, loss_mask=(observed & hidden).to(x.dtype))

    def wrap_denoiser(self, denoiser):
        """The denoiser samplers use: centred on each window's ``offset`` (``OffsetDenoiser``)."""
        return OffsetDenoiser(denoiser)

    def imputation_inputs(self, x: Tensor, given: Tensor, time_pos: Tensor | None = None) -> dict:
        """Keyword arguments for ``sampler.sample``: the ``given`` values condition the network and
        are the sampler's known region, so they come back exactly. Their mean per window and
        variable is the ``offset`` of ``OffsetDenoiser``; the network sees values centred on it."""
        given = given.to(x.dtype)
        offset = window_offset(x, given)
        cond = {"cond_values": (x - offset) * given, "cond_mask": given, "offset": offset}
        if time_pos is not None:
            cond["time_pos"] = time_pos.to(x.dtype)
        return {"cond": cond, "known_mask": given, "known_values": x * given}

    def example_batch(self, n: int = 4, seed: int = 0) -> dict[str, Tensor]:
        """``n`` validation windows (training ones if there is no validation data) with a fixed
        block of every variable hidden, for previews: ``x``, ``mask`` (observed), ``given`` (observed and
        not hidden), ``time_pos``."""
        train, val = self.splits()
        windows = make_windows(val if val.series else train, self.window, self.window)
        x, observed = to_model_space(windows.values[:n], self.normalizer)
        generator = torch.Generator().manual_seed(seed)
        hidden = block_hidden(observed > 0, generator, (self.window // 4, self.window // 4), all_features_prob=1.0)
        return {
            "x": x,
            "mask": observed,
            "given": observed * (~hidden).float(),
            "time_pos": torch.as_tensor(windows.time_pos[:n], dtype=torch.float32),
        }

    def sampling_inputs(self, n: int, labels: Tensor | None = None, seed: int = 0) -> dict:
        """Previews and the generic sample CLI impute held-out windows with a block hidden (see
        ``example_batch``), cycling through them when ``n`` exceeds their number."""
        if labels is not None:
            raise ValueError("the timeseries domain has no classes; leave label unset")
        example = self.example_batch(n, seed)
        rows = torch.arange(n) % example["x"].shape[0]
        return self.imputation_inputs(example["x"][rows], example["given"][rows], example["time_pos"][rows])

    # -- output

    def decode(self, x: Tensor) -> np.ndarray:
        """Model space [..., K, L] -> values in data units (float64 numpy)."""
        return self.normalizer.denormalize(x, feature_axis=-2)

    def preview(
        self,
        x: Tensor,
        path: Path,
        labels: Tensor | None = None,
        *,
        given_values: Tensor | None = None,
        given: Tensor | None = None,
        time_pos: Tensor | None = None,
        max_windows: int = 4,
        max_features: int = 4,
    ) -> Path:
        """Plot windows (rows) by variables (columns): the median of the samples as a line, a
        5-95 % band when ``x`` holds several samples per window ([S, N, K, L]), and ``given_values``
        (model space) where ``given`` is 1 as dots."""
        samples = self.decode(x if x.ndim == 4 else x[None])
        n_windows, n_features = min(samples.shape[1], max_windows), min(samples.shape[2], max_features)
        dots = self.decode(given_values) if given_values is not None else None
        shown_at = given.detach().cpu().numpy() > 0 if given is not None else None
        steps = samples.shape[-1]
        positions = (
            time_pos.detach().cpu().numpy() if time_pos is not None else np.tile(np.arange(steps), (n_windows, 1))
        )
        # fixed margins: a constrained layout doubles the cost of a preview, drawn at every validation
        fig = Figure(figsize=(3.2 * n_features, 2.0 * n_windows))
        fig.subplots_adjust(
            left=0.09 / n_features**0.5,
            right=0.98,
            bottom=0.12 / n_windows**0.5,
            top=1 - 0.12 / n_windows**0.7,
            wspace=0.25,
            hspace=0.3,
        )
        axes = fig.subplots(n_windows, n_features, squeeze=False)
        for w in range(n_windows):
            pos = positions[w] if positions.ndim == 2 else positions
            for k in range(n_features):
                ax = axes[w, k]
                series = samples[:, w, k]
                if len(series) > 1:
                    low, high = np.quantile(series, [0.05, 0.95], axis=0)
                    ax.fill_between(pos, low, high, color="tab:blue", alpha=0.25, linewidth=0)
                ax.plot(pos, np.median(series, axis=0), color="tab:blue", linewidth=1.0)
                if dots is not None and shown_at is not None:
                    shown = shown_at[w, k]
                    ax.plot(pos[shown], dots[w, k][shown], ".", color="black", markersize=2.5)
                if w == 0:
                    ax.set_title(self.columns[k], fontsize=9)
                ax.tick_params(labelsize=7)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path

    def save(
        self,
        x: Tensor,
        out_dir: Path,
        labels: Tensor | None,
        seeds: list[int],
        trajectory: Tensor | None = None,
        prompts: list[str] | None = None,
        *,
        given_values: Tensor | None = None,
        given: Tensor | None = None,
        time_pos: Tensor | None = None,
    ) -> list[Path]:
        """Write ``windows.csv`` (one row per window and step: the median per variable, with
        ``<var>_q05``/``<var>_q95`` when ``x`` holds several samples per window [S, N, K, L] and
        ``<var>_observed``, 1 where ``given``, when ``given`` is passed), ``samples.npz`` (every
        sample in data units and in model space, seeds, columns), ``grid.png`` (the windows) and,
        with a trajectory, ``strip.png`` (file names shared by every domain). Time series take no prompts."""
        if prompts is not None:
            raise ValueError("time-series samples have no prompts; pass prompts=None")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples = x if x.ndim == 4 else x[None]
        values = self.decode(samples)
        s, n, _, steps = values.shape
        positions = (
            time_pos.detach().cpu().numpy() if time_pos is not None else np.tile(np.arange(steps, dtype=float), (n, 1))
        )
        table = {
            "window": np.repeat(np.arange(n), steps),
            "step": np.tile(np.arange(steps), n),
            "time_pos": np.broadcast_to(positions, (n, steps)).reshape(-1),
        }
        if s == 1 and len(seeds) == n:
            table["seed"] = np.repeat(np.asarray(seeds), steps)
        median = np.median(values, axis=0)
        quantiles = np.quantile(values, [0.05, 0.95], axis=0) if s > 1 else None
        given_flags = given.detach().cpu().numpy() > 0 if given is not None else None
        for k, column in enumerate(self.columns):
            table[column] = median[:, k].reshape(-1)
            if quantiles is not None:
                table[f"{column}_q05"] = quantiles[0, :, k].reshape(-1)
                table[f"{column}_q95"] = quantiles[1, :, k].reshape(-1)
            if given_flags is not None:
                table[f"{column}_observed"] = given_flags[:, k].reshape(-1).astype(int)
        paths = [out_dir / "windows.csv", out_dir / SAMPLES_FILE]
        pd.DataFrame(table).to_csv(paths[0], index=False)
        np.savez(
            paths[1],
            values=values,
            model_space=samples.detach().cpu().numpy(),
            seeds=np.asarray(seeds),
            columns=np.asarray(self.columns),
        )
        paths.append(
            self.preview(samples, out_dir / GRID_FILE, given_values=given_values, given=given, time_pos=time_pos)
        )
        if trajectory is not None:
            paths.append(self.progression(trajectory, out_dir / STRIP_FILE))
        return paths

    def progression(self, trajectory: Tensor, path: Path) -> Path:
        """The first window's first variable at each recorded step, from noisy (light) to final (dark)."""
        curves = self.decode(trajectory[:, 0])[:, 0]
        fig = Figure(figsize=(6, 2.5), layout="constrained")
        ax = fig.subplots()
        for i, curve in enumerate(curves):
            shade = i / max(1, len(curves) - 1)
            ax.plot(curve, color=matplotlib.colormaps["viridis"](1 - shade), linewidth=0.6 + shade)
        ax.set_title(f"{self.columns[0]}: x0 estimate while sampling (light: early, dark: final)", fontsize=9)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path
