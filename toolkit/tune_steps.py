"""Tune the sampling time grid of a trained model (``toolkit.core.tune``):

    python -m toolkit.tune_steps ckpt=PATH [nfe=10] [method=unipc] [draws=256] [seed=0] [device=cpu]
        [candidates=96] [refine=2]

Writes the grid into ``<run>/tuned_steps.json`` (one entry per method and step count), and a copy
of the checkpoint whose sampler config uses it, ``<ckpt stem>_tuned.ckpt`` next to the checkpoint:
``python -m toolkit.sample ckpt=<that copy> out=DIR`` samples with the tuned grid. With another
config, pass ``sampler.spacing=tuned sampler.grid_file=<run>/tuned_steps.json``.

A user error (a bad argument, a file that is not a checkpoint) prints one ``error: ...`` line and
exits with status 2, as the other commands do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from toolkit import cli
from toolkit.core import tune
from toolkit.files import atomic_path
from toolkit.module import load_module

DEFAULTS = {
    "ckpt": None,
    "nfe": 10,
    "method": None,
    "draws": 256,
    "seed": 0,
    "device": "cpu",
    "candidates": 96,  # times the grid is chosen from (the reference makes 4 steps per interval)
    "refine": 2,  # sweeps of coordinate descent after the dynamic programme
}


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments over DEFAULTS; raises ValueError naming a bad one."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are key=value pairs; got {bad}. Example: ckpt=last.ckpt nfe=10")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown}; known: {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **given}
    if args["ckpt"] is None:
        raise ValueError(
            "ckpt=... is required. Example: python -m toolkit.tune_steps ckpt=runs/image/T/checkpoints/last.ckpt nfe=10"
        )
    for key in ("nfe", "draws", "candidates"):
        if not isinstance(args[key], int) or args[key] < 1:
            raise ValueError(f"{key} must be a positive int, got {args[key]!r}")
    return args


def run_dir(ckpt: Path) -> Path:
    """The run folder of a checkpoint in ``<run>/checkpoints/``, else the checkpoint's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def run(args: dict) -> tuple[tune.TunedGrid, Path, Path]:
    ckpt = Path(args["ckpt"])
    module = load_module(ckpt, map_location=args["device"])
    cfg = module.config["sampler"]
    method = args["method"] or cfg["method"]
    shape, cond, inputs = module.sampling_inputs(args["draws"], args["seed"], None, cfg.get("guidance"))
    options = {k: cfg[k] for k in ("order", "variant") if method == cfg["method"] and cfg.get(k) is not None}
    grid = tune.tune(
        module.denoiser(),
        shape[1:],
        module.schedule,
        method,
        args["nfe"],
        draws=args["draws"],
        seed=args["seed"],
        candidates=args["candidates"],
        refine=args["refine"],
        device=module.device,
        cond=cond,
        **inputs,
        **options,
    )
    grid_file = tune.save_grid(run_dir(ckpt) / "tuned_steps.json", grid)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    sampler_cfg = checkpoint["hyper_parameters"]["config"]["sampler"]
    sampler_cfg.update(method=method, steps=grid.steps, spacing="tuned", grid_file=str(grid_file.resolve()))
    copy = ckpt.with_name(f"{ckpt.stem}_tuned.ckpt")
    with atomic_path(copy) as partial:
        torch.save(checkpoint, partial)
    return grid, grid_file, copy


def main(argv: list[str] | None = None) -> None:
    try:
        grid, grid_file, copy = run(parse_args(sys.argv[1:] if argv is None else argv))
    except (ValueError, FileNotFoundError) as error:
        cli.fail(str(error))
    print(
        f"{grid.method}, {grid.steps} steps ({grid.nfe} evaluations): distance to the many-step solution "
        f"{grid.error:.4g} with the tuned grid, {grid.default_error:.4g} with the default one\n"
        f"wrote {grid_file} and {copy}; sample with: python -m toolkit.sample ckpt={copy} out=DIR"
    )


if __name__ == "__main__":
    main()
