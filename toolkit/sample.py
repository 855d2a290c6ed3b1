"""Generation from a checkpoint, for every domain:

    python -m toolkit.sample ckpt=PATH out=DIR [n=64] [seed=0] [steps=20] [sampler=dpmpp_2m]
        [guidance=2.0] [label=7] [trajectory_every=2] [edit=inpaint image=x.png mask=m.png]

Without ``label``, classes go round-robin. The domain writes its files (PNG/WAV/PLY/CSV, a grid,
the progression strip and ``samples.npz``). The same call with the same seed writes the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from toolkit.module import load_module

DEFAULTS = {
    "ckpt": None,
    "out": None,
    "n": 16,
    "seed": 0,
    "steps": None,
    "sampler": None,
    "guidance": None,
    "label": None,
    "trajectory_every": 2,
    "device": "cpu",
    "edit": None,
    "image": None,
    "mask": None,
    "strength": 0.6,
    "left": 0,
    "right": 0,
    "top": 0,
    "bottom": 0,
}
EDIT_OPTIONS = ("image", "mask", "strength", "left", "right", "top", "bottom")


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments over DEFAULTS; unknown keys and missing required ones are errors."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"arguments are key=value pairs; got {bad}. Example: ckpt=last.ckpt out=samples n=16")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown argument(s) {unknown}; known: {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **given}
    for key in ("ckpt", "out"):
        if args[key] is None:
            raise SystemExit(f"{key}=... is required. Example: python -m toolkit.sample ckpt=last.ckpt out=samples")
    if not isinstance(args["n"], int) or args["n"] < 1:
        raise SystemExit(f"n must be a positive int, got {args['n']!r}")
    return args


def run(args: dict) -> list[Path]:
    module = load_module(args["ckpt"], map_location=args["device"])
    n = args["n"]
    labels = None if args["label"] is None else torch.full((n,), int(args["label"]), dtype=torch.long)
    extra = {}
    if args["edit"] is not None:
        options = {k: args[k] for k in EDIT_OPTIONS if args[k] is not None}
        extra = module.domain.edit_inputs(args["edit"], n, **options)
    out = module.generate(
        n,
        seed=args["seed"],
        labels=labels,
        method=args["sampler"],
        steps=args["steps"],
        guidance=args["guidance"],
        trajectory_every=args["trajectory_every"],
        progress=True,
        **extra,
    )
    return module.domain.save(out["x"], Path(args["out"]), out["labels"], out["seeds"], out["trajectory"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = run(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {len(paths)} files to {args['out']}")


if __name__ == "__main__":
    main()
