"""The diffusion core proven against exact denoisers of Gaussian mixtures: no training involved."""

import math
import warnings

import pytest
import torch

from toolkit.core import loss, sampler, schedule
from toolkit.core.denoiser import Denoiser, target_of, x0_from
from toolkit.core.mixture import GaussianMixture

SCHEDULES = ["linear", "cosine", "sigmoid", "edm"]
METHODS = list(sampler.SAMPLERS)
N = 3000


@pytest.fixture(scope="module", params=[2, 16], ids=["2d", "16d"])
def mixture(request):
    return GaussianMixture.random(request.param, components=3, seed=request.param)


def moment_errors(gm: GaussianMixture, x: torch.Tensor) -> dict[str, float]:
    """Errors of the sample moments and weights in units of their own sampling standard error,
    so that a correct sampler gives values of order 1 whatever the mixture and sample count."""
    n = x.shape[0]
    mean, cov = gm.mean(), gm.cov()
    var = cov.diagonal()
    mean_z = ((x.mean(0) - mean) / (var / n).sqrt()).abs().max()
    # Standard error of a covariance entry, Gaussian approximation (C_ii C_jj + C_ij^2) / n;
    # the mixture's heavier tails are covered by the bound chosen below.
    cov_se = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    cov_z = ((torch.cov(x.T) - cov) / cov_se).abs().max()
    w = torch.bincount(gm.classify(x), minlength=len(gm.weights)).double() / n
    w_z = ((w - gm.weights) / (gm.weights * (1 - gm.weights) / n).sqrt()).abs().max()
    return {"mean": float(mean_z), "cov": float(cov_z), "weights": float(w_z)}


def reproduces(gm, x, bound=5.0) -> bool:
    return all(v < bound for v in moment_errors(gm, x.double()).values())


# --- schedules ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_schedule_is_variance_preserving_and_monotone(name, zero_terminal_snr):
    sched = schedule.get(name, zero_terminal_snr=zero_terminal_snr)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha, sigma = sched.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    lam = sched.logsnr(t)
    assert (lam[1:] < lam[:-1]).all(), "logsnr must decrease in t"
    inner = slice(1, -1) if zero_terminal_snr else slice(None)
    torch.testing.assert_close(lam[inner], torch.log(alpha**2 / sigma**2)[inner])
    if zero_terminal_snr:
        assert alpha[-1] == 0 and lam[-1] == -math.inf
        torch.testing.assert_close(alpha[0], schedule.get(name).alpha_sigma(t[:1])[0][0])
    assert torch.isclose(sched.t_from_logsnr(lam[500]), t[500], atol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_closed_form_inverse_of_logsnr_matches_bisection(name, zero_terminal_snr):
    sched = schedule.get(name, zero_terminal_snr=zero_terminal_snr)
    t = torch.linspace(0, 1, 401, dtype=torch.float64)[1:-1]
    lam = sched.logsnr(t)
    inside = (lam > schedule.LOGSNR_MIN) & (lam < schedule.LOGSNR_MAX)  # not on a clipped plateau
    closed = sched.t_from_logsnr(lam)
    bisection = schedule.Schedule.t_from_logsnr(_NoClosedForm(sched), lam)
    assert sched._t_from_logsnr(lam) is not None  # the closed form is used, not the fallback
    torch.testing.assert_close(closed[inside], bisection[inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(closed[inside], t[inside], atol=1e-9, rtol=0)


class _NoClosedForm(schedule.Schedule):
    """A schedule's logSNR without its closed-form inverse: what the bisection fallback sees."""

    def __init__(self, inner):
        super().__init__(inner.zero_terminal_snr)
        self._logsnr = inner._logsnr


def test_schedules_match_their_definitions():
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    alpha, _ = schedule.get("linear").alpha_sigma(t)
    torch.testing.assert_close(alpha**2, torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2)))
    # DDPM's discrete betas 1e-4..0.02 over 1000 steps: alpha_bar at step 500 is ~0.0786.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    discrete = torch.cumprod(1 - betas, 0)[499]
    assert abs(float(schedule.get("linear").alpha_sigma(torch.tensor(0.5))[0] ** 2) - float(discrete)) < 5e-3
    assert abs(float(schedule.get("cosine").logsnr(torch.tensor(0.5)))) < 1e-9  # symmetric span
    edm = schedule.get("edm")
    s = lambda tt: float(torch.exp(-edm.logsnr(torch.tensor(tt, dtype=torch.float64)) / 2))  # noqa: E731
    assert math.isclose(s(0.0), 0.002, rel_tol=1e-9) and math.isclose(s(1.0), 80.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule.get("cosinus")


@pytest.mark.parametrize("spacing", schedule.SPACINGS)
def test_timesteps(spacing):
    sched = schedule.get("cosine")
    ts = schedule.timesteps(sched, 10, spacing)
    assert len(ts) == 11 and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    lam = sched.logsnr(ts[1:-1])
    if spacing == "logsnr":
        torch.testing.assert_close(lam.diff(), torch.full_like(lam.diff(), float(lam.diff()[0])))
    if spacing == "karras":
        root = torch.exp(-lam / 2) ** (1 / 7)
        torch.testing.assert_close(root.diff(), torch.full_like(root.diff(), float(root.diff()[0])))
    assert schedule.timesteps(sched, 10, spacing, t_start=0.4)[0] == 0.4


# --- samplers against the exact denoiser --------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_sampler_reproduces_mixture(mixture, method):
    sched = schedule.get("cosine")
    steps = {"ddpm": 250, "heun": 100}.get(method, 200)
    x = sampler.sample(mixture.denoiser(sched), (N, mixture.dim), sched, method, steps, seed=1, dtype=torch.float64)
    errors = moment_errors(mixture, x)
    assert all(v < 5.0 for v in errors.values()), errors


def test_moment_check_catches_wrong_schedule_sign_and_step(mixture):
    """The tolerance of the reproduction test is tight enough to see each kind of bug."""
    sched, other = schedule.get("cosine"), schedule.get("linear")
    right = sampler.sample(mixture.denoiser(sched), (N, mixture.dim), sched, "ddim", 200, seed=1)
    assert reproduces(mixture, right)
    wrong_schedule = sampler.sample(mixture.denoiser(other), (N, mixture.dim), sched, "ddim", 200, seed=1)
    assert not reproduces(mixture, wrong_schedule)
    D = mixture.denoiser(sched)
    flipped = sampler.sample(lambda x, t: 2 * x - D(x, t), (N, mixture.dim), sched, "ddim", 200, seed=1)
    assert not reproduces(mixture, flipped)
    few_steps = sampler.sample(D, (N, mixture.dim), sched, "euler", 3, seed=1)
    assert not reproduces(mixture, few_steps)


def test_zero_terminal_snr_sampling(mixture):
    sched = schedule.get("cosine", zero_terminal_snr=True)
    x = sampler.sample(mixture.denoiser(sched), (N, mixture.dim), sched, "ddim", 200, seed=2, dtype=torch.float64)
    assert torch.isfinite(x).all() and reproduces(mixture, x)


def ode_error(gm, method, steps, sched, ref):
    x = sampler.sample(gm.denoiser(sched), ref.shape, sched, method, steps, seed=3, dtype=torch.float64)
    return float((x - ref).pow(2).sum(1).mean().sqrt())


def test_dpmpp_2m_at_20_beats_ddim_at_50():
    gm = GaussianMixture.random(16, components=3, seed=16)
    sched = schedule.get("cosine")
    ref = sampler.sample(gm.denoiser(sched), (1000, 16), sched, "heun", 500, seed=3, dtype=torch.float64)
    e_dpm20, e_ddim50 = ode_error(gm, "dpmpp_2m", 20, sched, ref), ode_error(gm, "ddim", 50, sched, ref)
    assert e_dpm20 <= e_ddim50, (e_dpm20, e_ddim50)  # orders themselves: test_order_of_convergence


# Measured slopes of log error against log steps from 10 to 160 steps on the 2-D mixture, with
# the margin of the assertion (median per-sample distance to a converged solution from the same
# noise). UniPC of order p reaches p + 1 with its corrector; dpmpp_3m's first (first-order) step
# caps its asymptotic slope at 2, while it converges like a third-order method up to 40 steps.
ORDERS = {
    "ddim": 0.9,
    "euler": 0.9,
    "heun": 1.9,
    "dpmpp_2m": 1.9,
    "dpmpp_3m": 1.7,
    ("unipc", 1): 1.9,
    ("unipc", 2): 2.7,
    ("unipc", 3): 3.0,
}


@pytest.fixture(scope="module")
def converged():
    gm = GaussianMixture.random(2, components=3, seed=2)
    sched = schedule.get("cosine")
    D = gm.denoiser(sched)
    ref = sampler.sample(D, (300, 2), sched, "unipc", 1000, seed=3, dtype=torch.float64, spacing="logsnr", order=3)
    return gm, sched, ref


@pytest.mark.parametrize("method", list(ORDERS), ids=str)
def test_order_of_convergence(converged, method):
    gm, sched, ref = converged
    name, options = (method[0], {"order": method[1]}) if isinstance(method, tuple) else (method, {})
    steps = [20, 40, 80, 160]
    errors = []
    for n in steps:
        x = sampler.sample(
            gm.denoiser(sched), ref.shape, sched, name, n, seed=3, dtype=torch.float64, spacing="logsnr", **options
        )
        errors.append(float((x - ref).norm(dim=1).median()))
    slope = -torch.tensor(errors).log().diff().mean() / math.log(2)
    assert slope > ORDERS[method], (errors, float(slope))
    if ORDERS[method] < 1.5:
        assert slope < 1.5  # a first-order method is measured as one


@pytest.mark.parametrize("name", SCHEDULES)
def test_no_sampler_diverges_at_few_steps(name):
    """Every method at 3-9 steps on every schedule, in its default spacing: finite, and far closer
    to the mixture than the noise it starts from (Heun on Karras steps used to reach FD 4000)."""
    from toolkit.core.mixture import frechet_distance

    sched = schedule.get(name)
    for dim in (2, 16):
        gm = GaussianMixture.random(dim, components=3, seed=dim)
        start = frechet_distance(sampler.NoiseSource(range(400), (dim,), "cpu", torch.float64)(), gm.mean(), gm.cov())
        for method in METHODS:
            for steps in range(3, 10):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = sampler.sample(
                        gm.denoiser(sched), (400, dim), sched, method, steps, seed=0, dtype=torch.float64
                    )
                fd = frechet_distance(x, gm.mean(), gm.cov()) if torch.isfinite(x).all() else math.inf
                assert fd < 0.4 * start, (method, dim, steps, fd, start)


def test_few_steps_warn_with_advice():
    gm = GaussianMixture.random(2, components=3, seed=2)
    sched = schedule.get("cosine")
    with pytest.warns(UserWarning, match="ddpm with 5 steps is inaccurate.*unipc"):
        sampler.sample(gm.denoiser(sched), (4, 2), sched, "ddpm", 5)
    with pytest.warns(UserWarning, match="unipc with 5 steps"):
        sampler.sample(gm.denoiser(sched), (4, 2), sched, "unipc", 5, order=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.sample(gm.denoiser(sched), (4, 2), sched, "unipc", 5)
        sampler.sample(gm.denoiser(sched), (4, 2), sched, "dpmpp_2m", 3)


def test_unipc_options_are_checked():
    with pytest.raises(ValueError, match="variant"):
        sampler.sample(lambda x, t: x, (2, 2), "cosine", "unipc", 5, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        sampler.sample(lambda x, t: x, (2, 2), "cosine", "unipc", 5, order=4)


# --- guidance, known region, strength, trajectories, seeds ------------------------------


def conditional_denoiser(gm: GaussianMixture, sched):
    """label k: only component k; label K (null): the whole mixture."""
    K = len(gm.weights)
    parts = [GaussianMixture(torch.ones(1), gm.means[k : k + 1], gm.covs[k : k + 1]) for k in range(K)]

    def denoise(x, t, label):
        a, s = sched.alpha_sigma(t.double())
        out = gm.posterior_mean(x.double(), a, s)
        for k, part in enumerate(parts):
            rows = label == k
            if rows.any():
                out[rows] = part.posterior_mean(x[rows].double(), a[rows], s[rows])
        return out.to(x.dtype)

    return denoise


def test_guidance(mixture):
    sched, n = schedule.get("cosine"), 500
    D = conditional_denoiser(mixture, sched)
    cond = {"label": torch.zeros(n, dtype=torch.long)}
    uncond = {"label": torch.full((n,), 3)}
    args = ((n, mixture.dim), sched, "dpmpp_2m", 20)
    conditional = sampler.sample(D, *args, seed=0, cond=cond)
    unconditional = sampler.sample(D, *args, seed=0, cond=uncond)
    at_one = sampler.sample(D, *args, seed=0, cond=cond, guidance=1.0, uncond=uncond)
    at_zero = sampler.sample(D, *args, seed=0, cond=cond, guidance=0.0, uncond=uncond)
    torch.testing.assert_close(at_one, conditional, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(at_zero, unconditional, rtol=1e-5, atol=1e-5)
    # Scale > 1 extrapolates past the conditional samples, away from the unconditional ones.
    strong = sampler.sample(D, *args, seed=0, cond=cond, guidance=3.0, uncond=uncond)
    direction = conditional.mean(0) - unconditional.mean(0)
    assert (strong.mean(0) - unconditional.mean(0)) @ direction > 1.05 * (direction @ direction)


@pytest.mark.parametrize("method", ["dpmpp_3m", "unipc", "heun"])
def test_new_samplers_take_guidance_strength_and_trajectories(mixture, method):
    sched, n = schedule.get("cosine"), 200
    D = conditional_denoiser(mixture, sched)
    cond, uncond = {"label": torch.zeros(n, dtype=torch.long)}, {"label": torch.full((n,), 3)}
    args = ((n, mixture.dim), sched, method, 10)
    conditional = sampler.sample(D, *args, seed=0, cond=cond)
    torch.testing.assert_close(sampler.sample(D, *args, seed=0, cond=cond, guidance=1.0, uncond=uncond), conditional)
    strong = sampler.sample(D, *args, seed=0, cond=cond, guidance=3.0, uncond=uncond)
    assert not torch.allclose(strong, conditional)
    x_init, _ = mixture.sample(n, torch.Generator().manual_seed(1))
    plain = mixture.denoiser(sched)
    near = sampler.sample(plain, *args, seed=0, x_init=x_init.float(), strength=0.05)
    far = sampler.sample(plain, *args, seed=0)
    assert float((near - x_init).norm(dim=1).mean()) < 0.25 * float((far - x_init).norm(dim=1).mean())
    x, traj = sampler.sample(D, *args, seed=0, cond=cond, trajectory_every=3)
    assert torch.equal(x, conditional) and traj.x_t.shape == (5, n, mixture.dim)


@pytest.mark.parametrize("method", METHODS)
def test_known_region_comes_back_exactly(mixture, method):
    sched, n, d = schedule.get("cosine"), 64, mixture.dim
    known_values, _ = mixture.sample(n, torch.Generator().manual_seed(0))
    mask = (torch.arange(d) % 2 == 0).float().expand(n, d)
    x = sampler.sample(
        mixture.denoiser(sched), (n, d), sched, method, 10, seed=0,
        known_mask=mask, known_values=known_values.float(),
    )  # fmt: skip
    assert torch.equal(x[mask > 0], known_values.float()[mask > 0])
    assert not torch.equal(x[mask == 0], known_values.float()[mask == 0])


def test_known_region_conditions_the_rest():
    """Two strongly correlated coordinates: knowing one pulls the other towards its conditional
    mean. Replacement conditioning is approximate (the unknown part is denoised against a noisy
    copy of the known part), so it lands short of the exact 0.76; a network conditioned on the
    observed values (the time-series domain) is the exact route."""
    cov = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=torch.float64)
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), cov[None] * 0.25)
    sched, n = schedule.get("cosine"), 2000
    known = torch.tensor([[0.8, 0.0]]).expand(n, 2)
    mask = torch.tensor([[1.0, 0.0]]).expand(n, 2)
    x = sampler.sample(gm.denoiser(sched), (n, 2), sched, "ddpm", 200, seed=0, known_mask=mask, known_values=known)
    assert 0.5 * 0.76 < float(x[:, 1].mean()) < 0.76 + 0.05  # unconditional mean 0


def test_strength_starts_from_the_input(mixture):
    sched, n = schedule.get("cosine"), 256
    x_init, _ = mixture.sample(n, torch.Generator().manual_seed(1))
    D = mixture.denoiser(sched)
    gap = lambda s: float(
        (
            sampler.sample(
                D,
                (n, mixture.dim),
                sched,
                "ddim",
                20,
                seed=0,  # noqa: E731
                x_init=x_init.float(),
                strength=s,
            )
            - x_init
        )
        .norm(dim=1)
        .mean()
    )
    assert gap(0.05) < gap(0.5) < gap(1.0)
    assert gap(0.05) < 0.25 * gap(1.0)
    with pytest.raises(ValueError, match="x_init"):
        sampler.sample(D, (n, mixture.dim), sched, "ddim", 20, strength=0.5)


def test_trajectory(mixture):
    sched, n = schedule.get("cosine"), 32
    x, traj = sampler.sample(mixture.denoiser(sched), (n, mixture.dim), sched, "heun", 10, trajectory_every=2)
    assert traj.x_t.shape == traj.x0_hat.shape == (6, n, mixture.dim)
    assert traj.t[0] > 0.95 and traj.t[-1] == 0.0 and (traj.t.diff() < 0).all()
    assert torch.equal(traj.x_t[-1], x)
    # At pure noise the best estimate of x0 is the data mean; at the end it is the sample.
    spread = lambda v: (v.double() - mixture.mean()).norm(dim=1).mean()  # noqa: E731
    assert spread(traj.x0_hat[0]) < 0.25 * spread(x)


@pytest.mark.parametrize("method", METHODS)
def test_seeds_make_samples_independent_of_the_batch(method):
    gm = GaussianMixture.random(16, components=3, seed=0)
    sched = schedule.get("cosine")
    D = gm.denoiser(sched)
    batch = sampler.sample(D, (6, 16), sched, method, 8, seed=[11, 12, 13, 14, 15, 16])
    alone = sampler.sample(D, (1, 16), sched, method, 8, seed=[14])
    assert torch.equal(batch[3], alone[0])
    assert torch.equal(sampler.sample(D, (6, 16), sched, method, 8, seed=11), batch)
    assert not torch.equal(sampler.sample(D, (6, 16), sched, method, 8, seed=12), batch)
    with pytest.raises(ValueError, match="one seed per sample"):
        sampler.sample(D, (6, 16), sched, method, 8, seed=[1, 2])


def test_noise_is_standard_normal_and_per_sample():
    """The counter-based noise: standard normal (moments, tails, quantiles), independent between
    draws, elements and seeds, and each sample's values the same in any batch, shape position or dtype."""
    source = sampler.NoiseSource(range(400), (500,), "cpu", torch.float32)
    first, second = source(), source()
    z = first.double().flatten()
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.005
    assert abs(float((z**4).mean()) - 3) < 0.05 and abs(float((z**3).mean())) < 0.02
    for q in (0.001, 0.025, 0.5, 0.975, 0.999):
        expected = float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))
        assert abs(float(z.quantile(q)) - expected) < 0.02 + 0.03 * abs(expected), q
    assert torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1].abs() < 0.01
    assert torch.corrcoef(torch.stack([first[:, :-1].flatten(), first[:, 1:].flatten()]))[0, 1].abs() < 0.01
    assert torch.corrcoef(torch.stack([first[:-1].flatten(), first[1:].flatten()]))[0, 1].abs() < 0.01
    odd = (37, 3)  # element counts that do not fill a vector register: the same values either way
    alone = sampler.NoiseSource([14], odd, "cpu", torch.float64)
    batch = sampler.NoiseSource([3, 99, 14, 2**40, -5], odd, "cpu", torch.float64)
    for _ in range(3):
        one, many = alone(), batch()
        assert torch.equal(one[0], many[2])
    as_float32 = sampler.NoiseSource([14], odd, "cpu", torch.float32)()
    assert torch.equal(as_float32.double(), sampler.NoiseSource([14], odd, "cpu", torch.float64)())
    assert not torch.equal(many[0], many[1])


def test_bad_arguments():
    sched = schedule.get("cosine")
    D = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler.sample(D, (2, 3), sched, "dpm_solver", 10)
    with pytest.raises(ValueError, match="steps"):
        sampler.sample(D, (2, 3), sched, "ddim", 0)
    with pytest.raises(ValueError, match="uncond"):
        sampler.sample(D, (2, 3), sched, "ddim", 5, guidance=2.0)
    with pytest.raises(ValueError, match="broadcast"):
        sampler.sample(D, (2, 3), sched, "ddim", 5, known_mask=torch.ones(4), known_values=torch.ones(4))


# --- loss ----------------------------------------------------------------------------------


class GaussianOracle(torch.nn.Module):
    """The exact minimiser of the loss for data N(0, s^2 I), for each target."""

    def __init__(self, sched, s, target, sign=1.0):
        super().__init__()
        self.sched, self.s, self.target, self.sign = sched, s, target, sign

    def forward(self, x_t, t):
        a, sg = (v[:, None] for v in self.sched.alpha_sigma(t))
        x0 = self.sign * a * self.s**2 / (a**2 * self.s**2 + sg**2) * x_t
        eps = (x_t - a * x0) / sg
        return target_of(self.target, x0, eps, a, sg)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "edm"])
def test_oracle_gets_the_predicted_loss(target, weighting):
    sched, s, n, d = schedule.get("cosine"), 0.7, 20000, 8
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64) * s
    t = torch.full((n,), 0.4, dtype=torch.float64)
    got = loss.diffusion_loss(GaussianOracle(sched, s, target), x0, sched, target, weighting, t=t, generator=g)
    alpha, sigma = (float(v) for v in sched.alpha_sigma(t[:1]))
    snr = alpha**2 / sigma**2
    mmse_x0 = sigma**2 * s**2 / (alpha**2 * s**2 + sigma**2)
    mmse = {"x0": mmse_x0, "eps": mmse_x0 * snr, "v": mmse_x0 * (1 + snr)}[target]
    w_x0 = {"uniform": None, "min_snr": min(snr, 5.0), "edm": snr + 4.0}[weighting]
    expected = mmse if w_x0 is None else w_x0 * mmse_x0
    assert math.isclose(float(got), expected, rel_tol=0.03), (float(got), expected)
    # An oracle whose clean estimate is wrong by a sign is far off.
    wrong = GaussianOracle(sched, s, target, sign=-1.0)
    assert float(loss.diffusion_loss(wrong, x0, sched, target, weighting, t=t, generator=g)) > 1.2 * expected


def test_loss_mask_counts_only_valid_elements():
    sched = schedule.get("cosine")
    x0 = torch.randn(4, 2, 10)
    mask = torch.zeros(4, 1, 10)
    mask[..., :5] = 1
    noise = torch.randn_like(x0)

    def net(x_t, t):  # exact eps on the valid half, garbage on the rest
        out = noise.clone()
        out[..., 5:] += 100.0
        return out

    assert float(loss.diffusion_loss(net, x0, sched, "eps", mask=mask, noise=noise)) == 0.0
    assert float(loss.diffusion_loss(net, x0, sched, "eps", noise=noise)) > 1000


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_wrapper_inverts_the_target(prediction):
    sched = schedule.get("linear")
    x0, eps = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    a, s = (v[:, None, None, None] for v in sched.alpha_sigma(t))
    x_t = a * x0 + s * eps
    oracle = lambda x, tt: target_of(prediction, x0, eps, a, s)  # noqa: E731
    torch.testing.assert_close(Denoiser(oracle, sched, prediction)(x_t, t), x0)
    torch.testing.assert_close(x0_from(prediction, target_of(prediction, x0, eps, a, s), x_t, a, s), x0)
