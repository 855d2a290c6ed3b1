"""Continuous-time, variance-preserving noise schedules.

Every schedule is defined by its log signal-to-noise ratio ``logsnr(t)``, decreasing in
``t in [0, 1]``; the scales follow from it: ``alpha^2 = sigmoid(logsnr)``,
``sigma^2 = sigmoid(-logsnr)``, so ``alpha^2 + sigma^2 = 1`` holds by construction and
``x_t = alpha_t * x_0 + sigma_t * eps``. Samplers and the loss read a schedule only through
``alpha_sigma``, ``logsnr`` and ``t_from_logsnr``; every schedule here inverts its logSNR in
closed form (bisection remains for subclasses that do not).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


class Schedule:
    """Base class: subclasses implement ``_logsnr`` on a float64 tensor."""

    name = "base"

    def __init__(self, zero_terminal_snr: bool = False):
        self.zero_terminal_snr = zero_terminal_snr

    def _logsnr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _alpha_sigma64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t64 = t.to(torch.float64)
        lam = self._logsnr(t64)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        if self.zero_terminal_snr:
            # Lin et al. 2024: shift and rescale alpha so that alpha(1) = 0 and alpha(0) is kept.
            a0, a1 = (torch.sigmoid(self._logsnr(t64.new_tensor(v))).sqrt() for v in (0.0, 1.0))
            alpha = (alpha - a1) * a0 / (a0 - a1)
            sigma = (1 - alpha**2).clamp_min(0).sqrt()
        return alpha, sigma

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Signal and noise scales at time ``t`` (same dtype as ``t``, float32 for ints)."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        alpha, sigma = self._alpha_sigma64(t)
        return alpha.to(dtype), sigma.to(dtype)

    def logsnr(self, t: Tensor) -> Tensor:
        """log(alpha^2 / sigma^2); ``-inf`` at t = 1 under zero terminal SNR."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        alpha, sigma = self._alpha_sigma64(t)
        return (2 * (alpha.log() - sigma.log())).to(dtype)

    def _t_from_logsnr(self, lam: Tensor) -> Tensor | None:
        """Closed-form inverse of ``_logsnr`` (float64), or None where there is none."""
        return None

    def t_from_logsnr(self, logsnr: Tensor, iters: int = 64) -> Tensor:
        """Inverse of ``logsnr`` (float64): closed form where the schedule has one, else bisection."""
        target = torch.as_tensor(logsnr, dtype=torch.float64)
        lam = target
        if self.zero_terminal_snr:
            # Undo the shift of alpha (see _alpha_sigma64) to get the base schedule's logSNR.
            a0, a1 = (torch.sigmoid(self._logsnr(target.new_tensor(v))).sqrt() for v in (0.0, 1.0))
            alpha = torch.sigmoid(target).sqrt() * (a0 - a1) / a0 + a1
            lam = 2 * (alpha.log() - (1 - alpha**2).clamp_min(1e-300).sqrt().log())
        t = self._t_from_logsnr(lam)
        if t is not None:
            return t.clamp(0.0, 1.0)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = self.logsnr(mid) > target
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(zero_terminal_snr={self.zero_terminal_snr})"


class Linear(Schedule):
    """DDPM's linear betas (beta from 1e-4 to 0.02 over 1000 steps) in continuous time:
    ``alpha^2(t) = exp(-(b0 t + (b1 - b0) t^2 / 2))`` with b0 = 0.1, b1 = 20 (Song et al. 2021).
    logSNR is clipped to LOGSNR_MAX near t = 0 where it diverges."""

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, zero_terminal_snr: bool = False):
        super().__init__(zero_terminal_snr)
        self.beta_min, self.beta_max = beta_min, beta_max

    def _logsnr(self, t: Tensor) -> Tensor:
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return (-torch.log(torch.expm1(integral))).clamp(LOGSNR_MIN, LOGSNR_MAX)

    def _t_from_logsnr(self, lam: Tensor) -> Tensor:
        integral = torch.nn.functional.softplus(-lam)  # log(1 + e^-lam), the inverse of -log(expm1(.))
        slope = self.beta_max - self.beta_min
        if slope == 0:
            return integral / self.beta_min
        return 2 * integral / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * integral))


class Cosine(Schedule):
    """Nichol & Dhariwal's cosine schedule, ``logsnr = -2 log tan(pi t / 2)``, shifted so that
    it spans exactly [logsnr_min, logsnr_max] on [0, 1] (as in Hoogeboom et al. 2023)."""

    name = "cosine"

    def __init__(self, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, zero_terminal_snr: bool = False):
        super().__init__(zero_terminal_snr)
        self.b = math.atan(math.exp(-logsnr_max / 2))
        self.a = math.atan(math.exp(-logsnr_min / 2)) - self.b

    def _logsnr(self, t: Tensor) -> Tensor:
        return -2 * torch.log(torch.tan(self.a * t + self.b))

    def _t_from_logsnr(self, lam: Tensor) -> Tensor:
        return (torch.atan(torch.exp(-lam / 2)) - self.b) / self.a


class Sigmoid(Schedule):
    """Sigmoid schedule of Jabri et al. 2023 / Chen 2023:
    ``alpha^2(t) = (s(end/tau) - s((t(end-start)+start)/tau)) / (s(end/tau) - s(start/tau))``."""

    name = "sigmoid"

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0, zero_terminal_snr: bool = False):
        super().__init__(zero_terminal_snr)
        self.start, self.end, self.tau = start, end, tau

    def _logsnr(self, t: Tensor) -> Tensor:
        s_start, s_end = (1 / (1 + math.exp(-v / self.tau)) for v in (self.start, self.end))
        s_t = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        alpha2 = ((s_end - s_t) / (s_end - s_start)).clamp(1e-12, 1 - 1e-12)
        return (torch.log(alpha2) - torch.log1p(-alpha2)).clamp(LOGSNR_MIN, LOGSNR_MAX)

    def _t_from_logsnr(self, lam: Tensor) -> Tensor:
        s_start, s_end = (1 / (1 + math.exp(-v / self.tau)) for v in (self.start, self.end))
        s_t = (s_end - torch.sigmoid(lam) * (s_end - s_start)).clamp(1e-300, 1 - 1e-16)
        return (self.tau * torch.logit(s_t) - self.start) / (self.end - self.start)


class EDM(Schedule):
    """Karras et al. 2022: the EDM noise level ``s = sigma/alpha`` runs from s_min at t = 0 to
    s_max at t = 1 along ``s(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho``."""

    name = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        zero_terminal_snr: bool = False,
    ):
        super().__init__(zero_terminal_snr)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def _logsnr(self, t: Tensor) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return -2 * self.rho * torch.log(lo + t * (hi - lo))

    def _t_from_logsnr(self, lam: Tensor) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (torch.exp(-lam / (2 * self.rho)) - lo) / (hi - lo)


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Linear, Cosine, Sigmoid, EDM)}


def get(name: str | Schedule, **kwargs) -> Schedule:
    """A schedule by name (``linear``, ``cosine``, ``sigmoid``, ``edm``) with its keyword options."""
    if isinstance(name, Schedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)


# Bounds of the EDM noise level s = sigma/alpha used when placing sampling steps: below s_min
# the data is clean at any practical precision; sampling starts from pure noise at s_max, which
# neglects the data's share alpha = 1/s there. EDM's 80 (alpha = 0.0125) measurably biased the
# mixtures' results (converged FD 0.0051 against 0.0035 from t = 1 of the linear schedule, whose
# s is 148); at 200 (alpha = 0.005) the linear schedule starts at t = 1, as DDPM and diffusers do.
SAMPLING_SIGMA_MIN = 0.002
SAMPLING_SIGMA_MAX = 200.0
SPACINGS = ("uniform", "logsnr", "karras")


def timesteps(
    sched: Schedule,
    steps: int,
    spacing: str = "uniform",
    t_start: float = 1.0,
    rho: float = 7.0,
    sigma_min: float = SAMPLING_SIGMA_MIN,
) -> Tensor:
    """``steps + 1`` decreasing times from ``t_start`` to 0 (float64).

    The last time, 0, stands for clean data: samplers finish with a step to sigma = 0.
    - ``uniform``: equally spaced in t.
    - ``logsnr``: equally spaced in logSNR (DPM-Solver's choice), down to noise level ``sigma_min``.
    - ``karras``: EDM's rho-spacing of the noise level s = exp(-logsnr / 2), down to ``sigma_min``.
    The last two start at noise level SAMPLING_SIGMA_MAX when ``t_start`` is noisier than that,
    as EDM does (at 80): the data's share there (alpha = 0.005) is below what steps can resolve.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if spacing == "uniform":
        return torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    if not 0.0 < sigma_min < SAMPLING_SIGMA_MAX:
        raise ValueError(f"sigma_min must be in (0, {SAMPLING_SIGMA_MAX}), got {sigma_min}")
    lam_hi = min(float(sched.logsnr(torch.tensor(0.0, dtype=torch.float64))), -2 * math.log(sigma_min))
    lam_start = float(sched.logsnr(torch.tensor(t_start, dtype=torch.float64)))
    lam_lo = max(lam_start, -2 * math.log(SAMPLING_SIGMA_MAX))
    if spacing == "logsnr":
        lams = torch.linspace(lam_lo, lam_hi, steps, dtype=torch.float64)
    else:
        s_max, s_min = math.exp(-lam_lo / 2), math.exp(-lam_hi / 2)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lams = -2 * torch.log(s)
    ts = sched.t_from_logsnr(lams)
    if lam_start >= lam_lo:
        ts[0] = t_start  # exact start time (image-to-image); else start at SAMPLING_SIGMA_MAX
    return torch.cat([ts, ts.new_zeros(1)])
