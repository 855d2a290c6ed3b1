"""Cost of the time-series denoiser against PyPOTS' CSDI as the number of variables K and the window L grow.

    python benchmarks/ts_scaling.py            # K = 1, 4, 12, 32 x L = 32, 64, 128; writes results/ts_scaling.md
    python benchmarks/ts_scaling.py --quick    # a small grid, for a smoke test
    python benchmarks/ts_scaling.py --fit-cost # fit cost per imputation-benchmark source: results/ts_fit_cost.md

For every (K, L) cell both networks get the same random windows (10 % missing) and are timed on one CPU
thread: one training step (the training loss on a batch, backward and the optimiser's step, as each
project trains) and one denoiser evaluation for ``n_samples`` draws of one window (no gradient). Each
figure is the median of several repeats after one warm-up call, in wall time and in CPU time of the
process; repeats stop early when a measure has used its time allowance (a measure whose warm-up call alone
takes longer is that one call, marked "(1 call)"), and a cell expected to run past the run's time budget is
skipped and listed.

- Ours: ``toolkit.module.DiffusionModule`` built from the default time-series config (``domain=timeseries``,
  its net ``toolkit.nets.csdi.CSDINet``) on synthetic data of K variables with ``domain.window=L``; the
  training step is ``DiffusionModule._loss`` (masking, centring, the loss) with fused AdamW, as trained on the
  CPU; the evaluation is the wrapped denoiser the samplers call on the ``n_samples`` draws, in the imputer's
  chunks of ``SAMPLING_TOKENS`` cells per call (``toolkit.impute.imputer``).
- Peer: PyPOTS' CSDI core (``pypots.imputation.csdi.core._CSDI``) with the sizes the imputation benchmark
  gives it (the CSDI paper's: 64 channels, 4 layers, 8 heads, embeddings 128/16/128, 50 diffusion steps),
  its training loss (random target masks, one diffusion step per window) with Adam, and its denoiser
  (``backbone.diff_model``) on the same batch of ``n_samples`` draws. PyPOTS' ``predict`` draws the samples
  one after another (a loop of ``n_samples`` calls on one window), so the table also gives that cost,
  estimated as ``n_samples`` times the median of one batch-1 call.

Sampling one window costs evaluations x NFE: ours runs the config's sampler and steps (one evaluation per
step), PyPOTS 50 DDPM steps of its loop.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.imputation import CSDI_PAPER_SIZES, SOURCE_SETTINGS  # noqa: E402
from toolkit.config import compose_config  # noqa: E402
from toolkit.impute.imputer import SAMPLING_TOKENS  # noqa: E402
from toolkit.module import DiffusionModule  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "ts_scaling.md"
FIT_COST_OUT = Path(__file__).parent / "results" / "ts_fit_cost.md"
PEER_ITERATIONS = 1500  # the peer's fit in the comparison
FIT_BATCH = 32  # both projects' default training batch
FEATURES = (1, 4, 12, 32)
WINDOWS = (32, 64, 128)
QUICK_FEATURES = (1, 4)
QUICK_WINDOWS = (16,)
PEER_DIFFUSION_STEPS = 50
PEER_DIFFUSION_EMB_DIM = 128
MISSING_RATE = 0.1
GROWTH_TOLERANCE = 1.1  # timing noise on a shared machine: growths within 10 % count as the same
PYPOTS_HINT = 'pip install -e ".[bench-ts]" --only-binary tokenizers'


@dataclass
class Timing:
    """Medians over repeats, in seconds, or the reason there are none."""

    wall: float | None = None
    cpu: float | None = None
    repeats: int = 0


@dataclass
class NetCost:
    params: int
    train: Timing
    evaluate: Timing
    loop_call: Timing = field(default_factory=Timing)  # one batch-1 call (the peer's sampling loop)


@dataclass
class Cell:
    """One (K, L) cell: both networks' costs, the seconds the cell took, or why it was skipped."""

    features: int
    window: int
    ours: NetCost | None = None
    peer: NetCost | None = None
    seconds: float = 0.0
    skipped: str = ""


def time_call(step: Callable[[], object], repeats: int, allowance: float) -> Timing:
    """Median wall and CPU seconds of ``step`` over up to ``repeats`` calls after one warm-up call;
    repeating stops once ``allowance`` seconds have been spent (at least one timed call). When the warm-up
    alone takes over the allowance, it is the one measure (``repeats`` 0)."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    warm_up = Timing(time.perf_counter() - wall, time.process_time() - cpu, 0)
    if warm_up.wall > allowance:
        return warm_up
    walls, cpus = [], []
    while len(walls) < repeats and (not walls or sum(walls) + warm_up.wall < allowance):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), len(walls))


def random_windows(batch: int, features: int, window: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random-walk windows ``[batch, K, L]`` and their observed mask (1 - ``MISSING_RATE`` observed)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, features, window, generator=generator).cumsum(-1) / math.sqrt(window)
    observed = (torch.rand(batch, features, window, generator=generator) >= MISSING_RATE).float()
    return x * observed, observed


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def default_module(overrides: Sequence[str]) -> DiffusionModule:
    """A module of the default time-series config with ``overrides``."""
    config = compose_config(["domain=timeseries", *overrides])
    return DiffusionModule(OmegaConf.to_container(config, resolve=True))


def our_module(features: int, window: int, overrides: Sequence[str] = ()) -> DiffusionModule:
    """The default time-series module for K = ``features`` synthetic variables and windows of ``window``."""
    length = max(400, 3 * window)
    return default_module(
        [
            "domain.source=synthetic",
            f"domain.synthetic.num_features={features}",
            f"domain.synthetic.length={length}",
            f"domain.window={window}",
            *overrides,
        ]
    )


def measure_ours(features: int, window: int, args: argparse.Namespace) -> NetCost:
    module = our_module(features, window, args.override)
    x, observed = random_windows(args.batch, features, window, seed=0)
    batch = {"x": x, "mask": observed, "time_pos": torch.arange(window, dtype=torch.float32).expand(args.batch, -1)}
    optimizer = torch.optim.AdamW(module.net.parameters(), lr=module.config["optim"]["lr"], fused=True)  # as trained
    generator = torch.Generator().manual_seed(0)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        module._loss(batch, generator, drop_cond=True).backward()
        optimizer.step()

    module.net.train()
    train = time_call(train_step, args.repeats, args.allowance)

    window_x, window_observed = random_windows(1, features, window, seed=1)
    inputs = module.domain.imputation_inputs(
        window_x.expand(args.n_samples, -1, -1), window_observed.expand(args.n_samples, -1, -1)
    )
    denoiser = module.denoiser()
    x_t = torch.randn(args.n_samples, features, window, generator=generator)
    t = torch.full((args.n_samples,), 0.5)
    rows = max(1, SAMPLING_TOKENS // (features * window))  # the imputer's windows per network call

    def evaluate_in_chunks():
        for start in range(0, args.n_samples, rows):
            part = slice(start, start + rows)
            denoiser(x_t[part], t[part], **{key: value[part] for key, value in inputs["cond"].items()})

    module.net.eval()
    with torch.no_grad():
        evaluate = time_call(evaluate_in_chunks, args.repeats, args.allowance)
    return NetCost(count_params(module.net), train, evaluate)


def import_pypots_core():
    """PyPOTS' CSDI core class, imported with its banner sent to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        import pypots
        from pypots.imputation.csdi.core import _CSDI
    return pypots.__version__, _CSDI


def measure_peer(features: int, window: int, args: argparse.Namespace, core_class) -> NetCost:
    torch.manual_seed(0)
    core = core_class(
        n_features=features,
        n_layers=CSDI_PAPER_SIZES["layers"],
        n_heads=CSDI_PAPER_SIZES["heads"],
        n_channels=CSDI_PAPER_SIZES["channels"],
        d_time_embedding=CSDI_PAPER_SIZES["time_emb_dim"],
        d_feature_embedding=CSDI_PAPER_SIZES["feature_emb_dim"],
        d_diffusion_embedding=PEER_DIFFUSION_EMB_DIM,
        is_unconditional=False,
        n_diffusion_steps=PEER_DIFFUSION_STEPS,
        schedule="quad",
        beta_start=0.0001,
        beta_end=0.5,
    )
    x, observed = random_windows(args.batch, features, window, seed=0)
    generator = torch.Generator().manual_seed(0)
    time_pos = torch.arange(window, dtype=torch.float32).expand(args.batch, -1)
    optimizer = torch.optim.Adam(core.parameters(), lr=1e-3)

    def train_step():
        # PyPOTS' "random" target strategy: hide a uniform [0, 1) share of each window's observed values
        ratio = torch.rand(args.batch, 1, 1, generator=generator)
        cond_mask = observed * (torch.rand(x.shape, generator=generator) >= ratio).float()
        inputs = {"X_ori": x, "indicating_mask": observed - cond_mask, "cond_mask": cond_mask, "observed_tp": time_pos}
        optimizer.zero_grad(set_to_none=True)
        core(inputs, calc_criterion=True)["loss"].backward()
        optimizer.step()

    core.train()
    train = time_call(train_step, args.repeats, args.allowance)

    window_x, window_observed = random_windows(1, features, window, seed=1)
    core.eval()
    diff_model = core.backbone.diff_model

    def denoiser_call(n: int) -> Callable[[], Tensor]:
        side_info = core.get_side_info(time_pos[:1].expand(n, -1), window_observed.expand(n, -1, -1))
        noisy = torch.randn(n, features, window, generator=generator) * (1 - window_observed)
        diff_input = torch.stack([(window_x * window_observed).expand(n, -1, -1), noisy], dim=1)
        step = torch.tensor([PEER_DIFFUSION_STEPS // 2])
        return lambda: diff_model(diff_input, side_info, step)

    with torch.no_grad():
        evaluate = time_call(denoiser_call(args.n_samples), args.repeats, args.allowance)
        loop_call = time_call(denoiser_call(1), args.repeats, args.allowance)
    return NetCost(count_params(core), train, evaluate, loop_call)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def ms(timing_or_seconds: Timing | float | None) -> str:
    """Milliseconds of a wall-time figure; a measure made of the warm-up call alone is marked "(1 call)"."""
    if isinstance(timing_or_seconds, Timing):
        if timing_or_seconds.wall is None:
            return "-"
        once = " (1 call)" if timing_or_seconds.repeats == 0 else ""
        return f"{1000 * timing_or_seconds.wall:.1f}{once}"
    return "-" if timing_or_seconds is None else f"{1000 * timing_or_seconds:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    return "-" if numerator is None or denominator is None else f"{numerator / denominator:.2f}x"


def timing_cells(ours: Timing, peer: Timing | None) -> list[str]:
    """Wall ms ours / peer, CPU ms ours / peer, and the ratio peer / ours of the CPU times."""
    peer = peer or Timing()
    return [ms(ours), ms(peer), ms(ours.cpu), ms(peer.cpu), ratio(peer.cpu, ours.cpu)]


def loop_cpu(cost: NetCost | None, n_samples: int) -> float | None:
    """CPU seconds of the peer's sampling layout: ``n_samples`` calls of batch 1 per evaluation."""
    return None if cost is None or cost.loop_call.cpu is None else n_samples * cost.loop_call.cpu


def sampling_summary(ratios: list[tuple[float, int, int]]) -> list[str]:
    """One line: the smallest sampling speed-up over the peer, on univariate and on multivariate cells."""
    parts = []
    for label, chosen in (("K = 1", [r for r in ratios if r[1] == 1]), ("K >= 4", [r for r in ratios if r[1] >= 4])):
        if chosen:
            worst = min(chosen)
            parts.append(f"{label}: {worst[0]:.1f}x (K={worst[1]}, L={worst[2]})")
    return [f"Smallest sampling speed-up over the peer (CPU time), {'; '.join(parts)}.", ""] if parts else []


def tables(cells: list[Cell], args: argparse.Namespace, sampler: str, sampler_steps: int) -> list[str]:
    timing_header = ["ours wall ms", "peer wall ms", "ours CPU ms", "peer CPU ms", "peer / ours (CPU)"]
    measured = [c for c in cells if not c.skipped]
    skipped = [f"K={c.features} L={c.window}: {c.skipped}" for c in cells if c.skipped]
    train_rows = [[c.features, c.window, *timing_cells(c.ours.train, c.peer and c.peer.train)] for c in measured]
    eval_rows, sampling_ratios = [], []
    for c in measured:
        loop = loop_cpu(c.peer, args.n_samples)
        ours_window = None if c.ours.evaluate.cpu is None else sampler_steps * c.ours.evaluate.cpu
        peer_window = None if loop is None else PEER_DIFFUSION_STEPS * loop
        if ours_window and peer_window:
            sampling_ratios.append((peer_window / ours_window, c.features, c.window))
        eval_rows.append(
            [
                c.features,
                c.window,
                *timing_cells(c.ours.evaluate, c.peer and c.peer.evaluate),
                ms(loop),
                ratio(loop, c.ours.evaluate.cpu),
                ms(ours_window),
                ms(peer_window),
                ratio(peer_window, ours_window),
            ]
        )
    params = sorted({(c.features, c.ours.params, "-" if c.peer is None else c.peer.params) for c in measured})
    eval_header = [
        "K",
        "L",
        *timing_header,
        "peer's loop CPU ms",
        "loop / ours",
        "ours sampling CPU ms",
        "peer sampling CPU ms",
        "peer / ours",
    ]
    return [
        f"### One training step (batch {args.batch})",
        "",
        *markdown_table(["K", "L", *timing_header], train_rows),
        "",
        f"### One denoiser evaluation for {args.n_samples} samples of one window",
        "",
        f"Peer: PyPOTS' network on the batch of {args.n_samples}; ours: the same draws in the imputer's network "
        f"calls of at most {SAMPLING_TOKENS} cells (K x L x draws; all {args.n_samples} in one call up to K x L = "
        f"{SAMPLING_TOKENS // args.n_samples}). Peer's loop: what PyPOTS' "
        f"`predict` does, {args.n_samples} calls of batch 1 ({args.n_samples} x the median call). Sampling a "
        f"window: ours {sampler_steps} evaluations (the config's {sampler} steps) x the batched evaluation, the "
        f"peer {PEER_DIFFUSION_STEPS} DDPM steps x its loop.",
        "",
        *markdown_table(eval_header, eval_rows),
        "",
        *sampling_summary(sampling_ratios),
        *(["Cells not measured:", "", *(f"- {line}" for line in skipped), ""] if skipped else []),
        "### Parameters",
        "",
        *markdown_table(["K", "ours", "peer"], params),
        "",
    ]


def growth_table(cells: list[Cell], n_samples: int) -> list[str]:
    """CPU time at the largest K over CPU time at the smallest K, per window length, for each measure."""
    by_key = {(c.features, c.window): c for c in cells if not c.skipped}
    low, high = min(c.features for c in cells), max(c.features for c in cells)
    if low == high:
        return []
    measures = {
        "training step": lambda cost: cost.train.cpu,
        "evaluation, batched": lambda cost: cost.evaluate.cpu,
        "evaluation, peer's loop": lambda cost: loop_cpu(cost, n_samples),
    }
    rows, faster, compared = [], [], 0
    for window in sorted({c.window for c in cells}):
        first, last = by_key.get((low, window)), by_key.get((high, window))
        if first is None or last is None:
            continue
        for name, pick in measures.items():
            ours_growth = None if name.endswith("loop") else pick(last.ours) / pick(first.ours)
            peer_growth = None if first.peer is None else pick(last.peer) / pick(first.peer)
            rows.append([window, name, ratio(ours_growth, 1.0), ratio(peer_growth, 1.0)])
            if ours_growth is not None and peer_growth is not None:
                compared += 1
                if ours_growth > GROWTH_TOLERANCE * peer_growth:
                    faster.append(f"{name} at L={window}")
    header = ["L", "measure (CPU time)", f"ours K={high} / K={low}", f"peer K={high} / K={low}"]
    if not compared:
        verdict = "No growth compared: the peer was not timed or a cell at the smallest or largest K is missing."
    elif faster:
        verdict = (
            f"Ours grows faster than the peer's (by over {GROWTH_TOLERANCE - 1:.0%}) in: {', '.join(faster)}; "
            f"no faster in the other {compared - len(faster)} comparison(s)."
        )
    else:
        verdict = (
            f"Ours grows no faster than the peer's in all {compared} comparisons of the same layout (training "
            f"step, batched evaluation; within {GROWTH_TOLERANCE - 1:.0%})."
        )
    loops = [
        (
            window,
            loop_cpu(first.peer, n_samples) / first.ours.evaluate.cpu,
            loop_cpu(last.peer, n_samples) / last.ours.evaluate.cpu,
        )
        for window in sorted({c.window for c in cells})
        if (first := by_key.get((low, window))) and (last := by_key.get((high, window))) and first.peer and last.peer
    ]
    if loops:
        spans = ", ".join(f"{a:.1f}x -> {b:.1f}x at L={window}" for window, a, b in loops)
        verdict += (
            f" The peer's sampling loop (batch-1 calls) against our batched evaluation, K={low} -> K={high}: {spans}"
        )
        if all(at_high < at_low for _, at_low, at_high in loops):
            verdict += (
                ": the loop's per-call overhead counts at small K and fades as K grows, so a speed-up over PyPOTS "
                "measured on univariate data shrinks on multivariate data even where our network grows no faster."
            )
        else:
            verdict += "."
    return [f"### Growth from K={low} to K={high}", "", *markdown_table(header, rows, "llrr"), "", verdict, ""]


def estimated_seconds(done: list[Cell], features: int, window: int) -> float:
    """A cell's expected cost: the measured cell with the most tokens (K x L), scaled by tokens."""
    timed = [c for c in done if not c.skipped]
    if not timed:
        return 0.0
    largest = max(timed, key=lambda c: c.features * c.window)
    return largest.seconds * (features * window) / (largest.features * largest.window)


def validation_seconds(module: DiffusionModule) -> Timing:
    """Seconds of one validation of ``module``'s run: ``val/crps`` on its fixed held-out windows
    (``toolkit.callbacks.ImputationCRPS``) and ``val/loss`` over the validation batches."""
    from types import SimpleNamespace

    from toolkit.callbacks import ImputationCRPS

    data = module.domain.datamodule(FIT_BATCH, 0, 0)
    data.setup("fit")
    scorer = ImputationCRPS(**module.config["val_crps"])
    held_out = scorer.held_out_windows(SimpleNamespace(datamodule=data), module)
    module.eval()

    def validate():
        scorer.score(module, held_out)
        with torch.no_grad():
            for batch in data.val_dataloader():
                module._loss(batch, torch.Generator().manual_seed(0), drop_cond=False)

    return time_call(validate, 1, 1.0)


def fit_cost(sources: Sequence[str], args: argparse.Namespace, core_class) -> list[str]:
    """Projected fit cost per embedded source, ours against the peer's PEER_ITERATIONS, from one training
    step at FIT_BATCH of each network (on windows of the source's shape) and one validation of ours."""
    config = compose_config(["domain=timeseries"])
    max_steps, interval = int(config.trainer.max_steps), int(config.trainer.val_check_interval)
    stops = sorted({500, 1000, PEER_ITERATIONS, max_steps})
    rows = []
    for source in sources:
        module = default_module([f"domain.source={source}", *SOURCE_SETTINGS[source]])
        features, window = module.domain.sample_shape
        step_args = argparse.Namespace(**{**vars(args), "batch": FIT_BATCH})
        ours, peer = measure_ours(features, window, step_args), measure_peer(features, window, step_args, core_class)
        validation = validation_seconds(module)
        peer_fit = PEER_ITERATIONS * peer.train.cpu
        projected = [n * ours.train.cpu + math.ceil(n / interval) * validation.cpu for n in stops]
        break_even = peer_fit / (ours.train.cpu + validation.cpu / interval)
        rows.append(
            [
                f"{source} ({features} x {window})",
                ms(ours.train.cpu),
                ms(peer.train.cpu),
                f"{peer.train.cpu / ours.train.cpu:.2f}x",
                ms(validation.cpu),
                *(f"{seconds:.0f}" for seconds in projected),
                f"{peer_fit:.0f}",
                f"{break_even:.0f}",
            ]
        )
        print(f"fit cost {source}: {rows[-1]}", flush=True)
    header = [
        "source (K x L)",
        "ours step CPU ms",
        "peer iteration CPU ms",
        "peer / ours",
        "one validation CPU ms",
        *(f"ours {n} steps CPU s" for n in stops),
        f"peer {PEER_ITERATIONS} iterations CPU s",
        "ours at most, steps",
    ]
    return [
        f"### Fit cost against the peer's {PEER_ITERATIONS} iterations (batch {FIT_BATCH})",
        "",
        f"One training step of each network at batch {FIT_BATCH} on windows of each source's shape (the imputation "
        f"benchmark's settings), timed as above, and one validation of our default run on the source's own "
        f"held-out windows (val/crps and val/loss, every {interval} steps). Ours after N steps: N steps plus "
        f"the validations so far; the last column is the step count at which ours costs what the peer's "
        f"{PEER_ITERATIONS} iterations cost (the config's trainer.max_steps is {max_steps}). Training overhead "
        "outside the step (Lightning, EMA, checkpoints) is not counted for either.",
        "",
        *markdown_table(header, rows),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", nargs="+", type=int, default=None, help=f"K values (default {FEATURES})")
    parser.add_argument("--windows", nargs="+", type=int, default=None, help=f"L values (default {WINDOWS})")
    parser.add_argument("--quick", action="store_true", help=f"K {QUICK_FEATURES} x L {QUICK_WINDOWS}, 2 repeats")
    parser.add_argument("--batch", type=int, default=16, help="training batch for both networks")
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measure (after one warm-up)")
    parser.add_argument("--allowance", type=float, default=5.0, help="seconds per measure before repeats stop")
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds for the run: cells expected to pass it are skipped (the first one never is)",
    )
    parser.add_argument("--override", nargs="*", default=[], help="our config KEY=VALUE (e.g. domain.net.heads=8)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="time PyPOTS' CSDI")
    parser.add_argument(
        "--fit-cost",
        action="store_true",
        help=f"instead: the fit cost of each imputation-benchmark source against the peer's {PEER_ITERATIONS} "
        f"iterations (default --out {FIT_COST_OUT.relative_to(Path(__file__).parent.parent)})",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {DEFAULT_OUT.name})")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    features = args.features or (QUICK_FEATURES if args.quick else FEATURES)
    windows = args.windows or (QUICK_WINDOWS if args.quick else WINDOWS)
    for name, value in {"batch": args.batch, "n-samples": args.n_samples, "repeats": args.repeats}.items():
        if value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if min(features) < 1 or min(windows) < 2:
        parser.error(f"K must be >= 1 and L >= 2, got K {features}, L {windows}")
    torch.set_num_threads(1)

    peer_version, core_class = None, None
    if args.peer:
        try:
            peer_version, core_class = import_pypots_core()
        except ImportError as error:
            print(f"PyPOTS CSDI not timed ({error}); install it: `{PYPOTS_HINT}`")
    command = ("python benchmarks/ts_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    if args.fit_cost:
        if core_class is None:
            parser.error(f"--fit-cost compares against PyPOTS' CSDI, which is not available: `{PYPOTS_HINT}`")
        load_before, started = load_average(), time.perf_counter()
        table = fit_cost(list(SOURCE_SETTINGS), args, core_class)
        body = [
            "",
            f"- Peer: PyPOTS {peer_version} CSDI core, sizes {CSDI_PAPER_SIZES}; ours: the default time-series config.",
            f"- One torch thread; up to {args.repeats} timed repeats per measure after one warm-up, at most "
            f"{args.allowance:.0f} s per measure.",
            f"- Load average before: {load_before}; after: {load_average()}; {time.perf_counter() - started:.0f} s "
            "in all. CPU times are reported; the cores were shared with other jobs.",
            "",
            *table,
        ]
        path = write_results(args.out or FIT_COST_OUT, "Time-series fit cost against PyPOTS' CSDI", command, body)
        print(f"wrote {path}")
        return path
    load_before, started = load_average(), time.perf_counter()
    cells: list[Cell] = []
    for k in features:
        for window in windows:
            expected, spent = estimated_seconds(cells, k, window), time.perf_counter() - started
            if any(not c.skipped for c in cells) and spent + expected > args.budget:
                reason = (
                    f"skipped: about {expected:.0f} s expected after {spent:.0f} s, past the {args.budget:.0f} s budget"
                )
                cells.append(Cell(k, window, skipped=reason))
                print(f"K={k} L={window}: {reason}", flush=True)
                continue
            cell_started = time.perf_counter()
            ours = measure_ours(k, window, args)
            peer = measure_peer(k, window, args, core_class) if core_class is not None else None
            cells.append(Cell(k, window, ours, peer, time.perf_counter() - cell_started))
            print(
                f"K={k} L={window}: CPU ms train ours {ms(ours.train.cpu)} peer {ms(peer and peer.train.cpu)}; "
                f"evaluation ours {ms(ours.evaluate.cpu)} peer {ms(peer and peer.evaluate.cpu)}",
                flush=True,
            )
    elapsed, load_after = time.perf_counter() - started, load_average()

    config = our_module(features[0], windows[0], args.override).config
    net = {k: v for k, v in config["domain"]["net"].items() if k != "_target_"}
    sampler, sampler_steps = str(config["sampler"]["method"]), int(config["sampler"]["steps"])
    peer_line = (
        f"PyPOTS {peer_version} CSDI core, sizes {CSDI_PAPER_SIZES}, {PEER_DIFFUSION_STEPS} diffusion steps"
        if peer_version
        else f"not timed: PyPOTS is not installed (`{PYPOTS_HINT}`)"
    )
    body = [
        "",
        "\n\n".join(__doc__.split("\n\n")[2:]).strip(),
        "",
        f"- Our net: `CSDINet` {net} (overrides of the default config: {args.override or 'none'}).",
        f"- Peer's net: {peer_line}.",
        f"- One torch thread; up to {args.repeats} timed repeats per measure after one warm-up, at most "
        f"{args.allowance:.0f} s per measure; {MISSING_RATE:.0%} of values missing.",
        f"- Load average before: {load_before}; after: {load_after}; {elapsed:.0f} s in all. The machine's cores "
        "are shared with other jobs: wall times above CPU times show waiting for a core.",
        "",
        *tables(cells, args, sampler, sampler_steps),
        *growth_table(cells, args.n_samples),
    ]
    path = write_results(args.out or DEFAULT_OUT, "Time-series denoiser cost against K and L", command, body)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
