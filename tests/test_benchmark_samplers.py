"""benchmarks/samplers.py on a tiny configuration, so that the script cannot rot: its diffusers
drivers must reproduce the mixture and agree with our samplers on the same grid."""

import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

pytest.importorskip("diffusers")

from toolkit.core import schedule  # noqa: E402
from toolkit.core.mixture import GaussianMixture  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "samplers.py"


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("samplers")
    yield module
    del sys.modules[module.__name__]


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(2, 3, seed=2)


def test_driver_matches_our_sampler_on_the_same_grid(bench, mixture):
    """diffusers' trailing spacing is our uniform grid on the discrete training steps: from the same
    noise and exact denoiser, DDIM and DPM++2M land where ours do, up to the discretisation of t."""
    n, sched = 200, schedule.get("linear")
    noise = bench.initial_noise(n, 2)
    denoise = bench.mixture_vp_denoiser(mixture)
    for method, scheduler in (("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")):
        ours = bench.run_ours(method, 10, mixture.denoiser(sched), sched, n, 2, spacing="uniform")
        theirs = bench.run_peer(bench.PeerConfig(scheduler, "trailing"), 10, denoise, noise)
        gap = float((ours - theirs).norm(dim=1).mean())
        assert gap < 0.01 * float(ours.norm(dim=1).mean()), (method, gap)


def test_every_scheduler_driver_follows_the_ode(bench, mixture):
    """From the same noise, each diffusers scheduler at 50 steps (a divisor of 1000: DDIM steps by
    1000 // steps) lands next to our converged ODE solution; a denoiser told a noise level 5% off
    does not."""
    n, sched = 300, schedule.get("linear")
    noise = bench.initial_noise(n, 2)
    denoise = bench.mixture_vp_denoiser(mixture)
    converged = bench.run_ours("dpmpp_2m", 100, mixture.denoiser(sched), sched, n, 2, spacing="uniform")
    gap = lambda x: float((x - converged).norm(dim=1).mean() / converged.norm(dim=1).mean())  # noqa: E731
    for configs in bench.PEER_CONFIGS.values():
        assert gap(bench.run_peer(configs[0], 50, denoise, noise)) < 0.03, configs[0].name
    off = lambda x, alpha_bar: denoise(x, min(1.0, 1.05 * alpha_bar))  # noqa: E731
    assert gap(bench.run_peer(bench.PEER_CONFIGS["DPMSolverMultistepScheduler"][0], 50, off, noise)) > 0.06


def test_evaluations_are_counted_not_assumed(bench):
    heun = bench.PeerConfig("HeunDiscreteScheduler", "trailing")
    count_ours = lambda method: lambda steps: bench.our_evaluations(method, "uniform", "linear", steps)  # noqa: E731
    count_theirs = lambda config: lambda steps: bench.peer_evaluations(config, steps)  # noqa: E731
    assert bench.steps_for_nfe(count_ours("heun"), 10) == (5, 9)
    assert bench.steps_for_nfe(count_theirs(heun), 10) == (5, 9)
    assert bench.steps_for_nfe(count_ours("heun"), 5) == (3, 5)
    assert bench.steps_for_nfe(count_ours("dpmpp_2m"), 10) == (10, 10)
    assert bench.steps_for_nfe(count_theirs(bench.PeerConfig("UniPCMultistepScheduler", "trailing")), 5) == (
        5,
        5,
    )
    assert bench.steps_for_nfe(lambda steps: 2 * steps + 1, 2) is None


def test_cli_writes_the_report(bench, tmp_path):
    out = tmp_path / "samplers.md"
    bench.main(["--n", "200", "--nfe", "5", "10", "--dims", "2", "--skip-overhead", "--out", str(out)])
    text = out.read_text()
    assert "pip install -c constraints.txt -e" in text and "## Findings" in text and "## Overhead" not in text
    for name in [*bench.SAMPLERS, *bench.SHORT_NAMES.values()]:
        assert name in text
    heun_row = next(line for line in text.splitlines() if line.startswith("| ours: heun, logsnr to s(N) |"))
    assert "(9)" in heun_row  # 10 NFE is not reachable: Heun reports the 9 it made
    tuned_row = next(line for line in text.splitlines() if line.startswith("| ours: unipc, tuned |"))
    assert "skipped" not in tuned_row and "nan" not in tuned_row
    assert text.count("| floor (exact draws) |") == 2


def test_overhead_is_timed_for_every_sampler(bench):
    cost = bench.overhead(shapes=[(64, 4)], repeats=3, log=lambda _: None)
    assert set(cost.ours) == set(bench.SAMPLERS) and set(cost.theirs) == set(bench.PEER_CONFIGS)
    for timing in [*cost.ours.values(), *cost.theirs.values()]:
        assert timing[0].setup > 0 and timing[0].call > 0 and timing[0].per_step >= 0
    # ddpm draws per-sample seeded noise every step, ddim none: the loop timing sees it.
    assert cost.ours["ddpm"][0].per_step > 2 * cost.ours["ddim"][0].per_step
    assert len(bench.overhead_table(cost, 0)) == 2 + len(bench.OVERHEAD_PAIRS)


def test_ode_gap_script_measures_solver_error_apart_from_the_draw(tmp_path):
    """benchmarks/samplers_ode.py: every solver gets a distance to the exact ODE solution that
    shrinks with more evaluations, and the exact solution is its own zero row."""
    ode = load_benchmark("samplers_ode")
    out = ode.main(["--dims", "2", "--n", "64", "--draws", "2", "--nfe", "5", "20", "--out", str(tmp_path / "ode.md")])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ours:")]
    ours = ["| ours: unipc", "| ours: dpmpp_2m", "| ours: dpmpp_3m", "| ours: unipc, tuned", "| ours: dpmpp_2m, tuned"]
    assert [row[0] for row in rows] == ours
    assert all(float(row[3]) < float(row[1]) for row in rows)  # 20 NFE closer to the ODE than 5
    text = out.read_text()
    assert "- 2-D, 5 NFE: distance to the ODE: " in text and "- 2-D, 20 NFE: " in text
    del sys.modules[ode.__name__]
