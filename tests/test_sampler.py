"""The sampler's parts: the registry, the denoiser wrappers and the callback mechanism."""

import pytest
import torch

from toolkit.core import sampler, schedule
from toolkit.core.wrappers import KnownRegion, guided


def linear_denoiser(x_t, t, label=None):
    shift = 0.0 if label is None else label.float().view(-1, *[1] * (x_t.ndim - 1))
    return 0.5 * x_t + shift


def test_registry_declares_each_method_with_a_known_spacing():
    for name, method in sampler.SAMPLERS.items():
        assert method.spacing in schedule.SPACINGS and sampler.get(name) is method.step
        expected = None if method.sigma_min is None else pytest.approx(method.sigma_min * (10 / 40) ** 2)
        assert sampler.default_sigma_min(name, 40) == expected
    assert sampler.SAMPLERS["unipc"].min_steps({"order": 3})[0] == 8 > sampler.SAMPLERS["unipc"].min_steps({})[0]
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sampler.get("nope")


def test_guided_is_the_classifier_free_combination_of_both_branches():
    x, t = torch.randn(2, 3), torch.rand(2)
    cond, uncond = {"label": torch.tensor([1, 2])}, {"label": torch.tensor([0, 0])}
    out = guided(linear_denoiser, 3.0, uncond)(x, t, **cond)
    x0_c, x0_u = linear_denoiser(x, t, **cond), linear_denoiser(x, t, **uncond)
    assert torch.allclose(out, x0_u + 3.0 * (x0_c - x0_u))


def test_guidance_interval_guides_inside_it_and_is_plain_conditional_outside():
    x, t = torch.randn(3, 3), torch.tensor([0.1, 0.5, 0.9])
    cond, uncond = {"label": torch.tensor([1, 2, 3])}, {"label": torch.tensor([0, 0, 0])}
    calls = []

    def counted(x_t, t_, **c):
        calls.append(len(x_t))
        return linear_denoiser(x_t, t_, **c)

    out = guided(counted, 3.0, uncond, interval=(0.3, 0.7))(x, t, **cond)
    x0_c, x0_u = linear_denoiser(x, t, **cond), linear_denoiser(x, t, **uncond)
    assert torch.allclose(out[1], x0_u[1] + 3.0 * (x0_c[1] - x0_u[1]))
    assert torch.allclose(out[[0, 2]], x0_c[[0, 2]])
    calls.clear()
    outside = guided(counted, 3.0, uncond, interval=(0.3, 0.7))(x[:1], t[:1], **{"label": cond["label"][:1]})
    assert calls == [1] and torch.allclose(outside, x0_c[:1])  # one call, no unconditional branch
    with pytest.raises(ValueError, match="guidance interval"):
        guided(linear_denoiser, 3.0, uncond, interval=(0.7, 0.3))


def test_known_region_holds_the_known_values_in_every_estimate():
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    region = KnownRegion(mask, torch.full((1, 3), 7.0))
    out = region.wrap(linear_denoiser)(torch.ones(1, 3), torch.rand(1))
    assert out.tolist() == [[7.0, 0.5, 7.0]]


@pytest.mark.parametrize("method", ["heun", "unipc", "ddpm"])
def test_callback_sees_each_step_once_with_the_trajectory_it_records(method):
    seen = []
    x, traj = sampler.sample(
        linear_denoiser, (2, 3), "cosine", method, 4, trajectory_every=1, callback=lambda s: seen.append(s)
    )
    assert [s.i for s in seen] == [0, 1, 2, 3] and torch.tensor([s.t for s in seen]).equal(traj.t[:-1])
    assert torch.equal(torch.stack([s.x0_hat for s in seen]), traj.x0_hat[:-1])
    assert torch.equal(traj.x0_hat[-1], x)
