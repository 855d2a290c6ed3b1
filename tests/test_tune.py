"""Tuned time grids (toolkit.core.tune) on exact mixtures, and the tune_steps CLI on a tiny run."""

import itertools
import json
import warnings

import pytest
import torch

from toolkit.core import sampler, schedule, tune
from toolkit.core.mixture import GaussianMixture, frechet_distance


def test_shortest_path_is_the_cheapest_path():
    cost = torch.rand(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (1, 3, 7):
        path = tune.shortest_path(cost, steps)
        assert path[0] == 0 and path[-1] == 7 and len(path) == steps + 1
        total = lambda p: sum(float(cost[a, b]) for a, b in itertools.pairwise(p))  # noqa: E731
        brute = min(total((0, *inner, 7)) for inner in itertools.combinations(range(1, 7), steps - 1))
        assert abs(total(path) - brute) < 1e-12
    with pytest.raises(ValueError, match="cannot make 8 steps"):
        tune.shortest_path(cost, 8)


@pytest.mark.parametrize(("method", "nfe"), [("unipc", 5), ("dpmpp_2m", 10)])
def test_tuned_grid_beats_the_default_grid(tmp_path, method, nfe):
    """Tuned on 256 draws, checked on 2000 others: closer to the many-step solution and to the
    mixture's moments than the method's default grid at the same number of evaluations."""
    gm, sched = GaussianMixture.random(2, components=3, seed=2), schedule.get("linear")
    D = gm.denoiser(sched)
    grid = tune.tune(D, (2,), sched, method, nfe, draws=256, seed=0, dtype=torch.float64)
    assert grid.nfe == nfe and len(grid.times) == grid.steps + 1 and grid.times[-1] == 0.0
    assert grid.error < grid.default_error
    run = lambda **kw: sampler.sample(D, (2000, 2), sched, seed=10_000, dtype=torch.float64, **kw)  # noqa: E731
    ref = run(method="dpmpp_3m", steps=400, spacing="logsnr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = run(method=method, steps=grid.steps)
    tuned = run(method=method, steps=grid.steps, spacing="tuned", times=grid.times)
    distance = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    assert distance(tuned) < 0.8 * distance(default), (distance(tuned), distance(default))
    fd = lambda x: frechet_distance(x, gm.mean(), gm.cov())  # noqa: E731
    assert fd(tuned) < fd(default), (fd(tuned), fd(default))
    path = tune.save_grid(tmp_path / "tuned_steps.json", grid)
    assert tune.load_grid(path, method, grid.steps) == grid.times


def test_grid_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="toolkit.tune_steps"):
        tune.load_grid(tmp_path / "none.json", "unipc", 10)
    grid = tune.TunedGrid("unipc", 3, 3, [1.0, 0.5, 0.1, 0.0], 0.1, 0.2, 8)
    path = tune.save_grid(tmp_path / "g.json", grid)
    tune.save_grid(path, tune.TunedGrid("heun", 3, 5, [1.0, 0.5, 0.1, 0.0], 0.1, 0.2, 8))
    assert len(json.loads(path.read_text())["grids"]) == 2
    with pytest.raises(ValueError, match="unipc at 3 steps.*method=unipc nfe=10"):
        tune.load_grid(path, "unipc", 10)
    D = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="needs times"):
        sampler.sample(D, (2, 2), "cosine", "unipc", 3, spacing="tuned")
    with pytest.raises(ValueError, match="makes 3 steps, not steps=4"):
        sampler.sample(D, (2, 2), "cosine", "unipc", 4, times=grid.times)
    with pytest.raises(ValueError, match="decrease"):
        sampler.sample(D, (2, 2), "cosine", "unipc", 3, times=[1.0, 0.1, 0.5, 0.0])


def test_tune_steps_cli_writes_a_grid_the_sample_cli_uses(tmp_path):
    from conftest import tiny_image_config as config

    from toolkit import sample, tune_steps
    from toolkit.module import load_module
    from toolkit.train import train

    last = train(config(), tmp_path / "run")
    tune_steps.main([f"ckpt={last}", "nfe=3", "draws=4", "candidates=8", "refine=0", "method=unipc"])
    grid_file = tmp_path / "run" / "tuned_steps.json"
    times = tune.load_grid(grid_file, "unipc", 3)
    copy = last.with_name("last_tuned.ckpt")
    module = load_module(copy)
    assert module.config["sampler"]["spacing"] == "tuned" and module.config["sampler"]["method"] == "unipc"
    tuned = module.generate(2, seed=5, guidance=1.0)["x"]  # the direct call below has no guidance
    direct = sampler.sample(
        module.denoiser(),
        tuned.shape,
        module.schedule,
        "unipc",
        3,
        seed=5,
        times=times,
        cond={"label": torch.tensor([0, 1])},
    )
    torch.testing.assert_close(tuned, direct)
    sample.main([f"ckpt={copy}", f"out={tmp_path / 'out'}", "n=2"])
    assert list((tmp_path / "out").glob("*.png"))
    with pytest.raises(SystemExit, match="ckpt=... is required"):
        tune_steps.main(["nfe=3"])


def test_sampler_config_spacing_is_checked():
    from conftest import tiny_image_config as config
    from omegaconf import OmegaConf

    from toolkit.module import check_config, sampler_options

    cfg = OmegaConf.to_container(config("sampler.spacing=karas"), resolve=True)
    with pytest.raises(ValueError, match="sampler.spacing='karas' is not valid"):
        check_config(cfg)
    with pytest.raises(ValueError, match="needs sampler.grid_file"):
        sampler_options({**cfg["sampler"], "spacing": "tuned"}, "dpmpp_2m", 20)
    assert sampler_options({**cfg["sampler"], "spacing": "karras"}, "dpmpp_2m", 20) == {"spacing": "karras"}
