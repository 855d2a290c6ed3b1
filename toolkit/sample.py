"""Generation from a checkpoint, for every domain:

    python -m toolkit.sample ckpt=PATH out=DIR [n=16] [seed=0] [steps=20] [sampler=dpmpp_2m]
        [guidance=2.0] [label=7 | label=three] [trajectory_every=2] [overwrite=true]
        [edit=inpaint image=x.png mask=m.png]
        [prompt="a bold seven" | prompts=FILE] [negative_prompt="a thin seven"]

``python -m toolkit.sample --help`` lists every key with its meaning and default. Without ``label``,
classes go round-robin. A model trained on captions takes ``prompt`` (all n samples) or ``prompts``
(a file, one prompt a line, n samples each); ``prompts.csv`` then says which prompt made which file.
The domain writes its files (PNG/WAV/PLY/CSV, a grid, ``strip.png`` and ``samples.npz``). The same
call with the same seed writes the same files.

A user error (a bad value, a file that is not a checkpoint, an ``out`` folder holding other files)
prints one ``error: ...`` line and exits with status 2. Samples are written to a hidden folder
next to ``out`` and renamed into place when complete, so ``out`` never holds half a result or a
mix of two runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from toolkit.cli import EXIT_USAGE, UsageError, fail  # noqa: F401 (EXIT_USAGE, UsageError: importable here)
from toolkit.core.sampler import SAMPLERS
from toolkit.files import atomic_path

MAX_SEED = 2**63 - 1  # seeds are stored as int64 in samples.npz
# The CLI keys that only apply to edits; a domain's ``edit_options`` says which of them it takes.
EDIT_OPTIONS = ("image", "mask", "strength", "left", "right", "top", "bottom")


# --- values -----------------------------------------------------------------------------------


def text(key: str, value: str) -> str:
    if not value:
        raise ValueError(f"{key}= is empty; give a value (--help lists the keys)")
    return value


def integer(minimum: int) -> Callable[[str, str], int]:
    def parse(key: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{key}={value} is not a whole number; e.g. {key}={max(minimum, 1)}") from None
        if number < minimum:
            kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
            raise ValueError(f"{key}={number} is not allowed: {key} must be a {kind} whole number")
        return number

    return parse


def number(key: str, value: str) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise ValueError(f"{key}={value} is not a number; e.g. {key}=2.0") from None
    if not math.isfinite(parsed) or parsed < 0:
        raise ValueError(f"{key}={value} is not allowed: {key} must be a finite number >= 0")
    return parsed


def interval(key: str, value: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"{key}={value} is not two numbers LOW,HIGH; e.g. {key}=0,0.5") from None
    return low, high  # the sampler checks the bounds


def boolean(key: str, value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"{key}={value} is not true or false")


def sampler_name(key: str, value: str) -> str:
    if value not in SAMPLERS:
        raise ValueError(f"unknown sampler {value!r} in {key}={value}; choose one of {', '.join(SAMPLERS)}")
    return value


# key: (default shown in --help, parser, meaning). A default of None means "not given".
KEYS: dict[str, tuple[object, Callable[[str, str], object], str]] = {
    "ckpt": (None, text, "checkpoint to sample from, e.g. runs/image/<time>/checkpoints/last.ckpt (required)"),
    "out": (None, text, "folder to write; must be new or empty unless overwrite=true (required)"),
    "n": (16, integer(1), "number of samples"),
    "seed": (0, integer(0), "seed of the first sample; sample i uses seed + i"),
    "steps": (None, integer(1), "sampler steps; default: the checkpoint's sampler.steps"),
    "sampler": (None, sampler_name, f"one of {', '.join(SAMPLERS)}; default: the checkpoint's"),
    "guidance": (None, number, "classifier-free guidance scale (1 = none); default: the checkpoint's"),
    "guidance_interval": (None, interval, "LOW,HIGH: guide only at times in it (1 = noise); default: the checkpoint's"),
    "label": (None, text, "class name (label=three) or index into the sorted class names; default: round-robin"),
    "prompt": (None, text, "text prompt for every sample (models trained on captions)"),
    "prompts": (None, text, "file of prompts, one a line (blank lines skipped), n samples each"),
    "negative_prompt": (None, text, "prompt that guidance steers away from (instead of the empty prompt)"),
    "trajectory_every": (2, integer(0), "a strip.png column every k sampler steps (0 = no strip.png)"),
    "device": ("cpu", text, "cpu, cuda, cuda:N or mps"),
    "overwrite": (False, boolean, "true replaces the files of an earlier sample run in out"),
    "edit": (None, text, "image edit: inpaint, outpaint or img2img (needs image=)"),
    "image": (None, text, "edit: the picture to edit"),
    "mask": (None, text, "edit=inpaint: a picture of the image's size, white = regenerate"),
    "strength": (0.6, number, "edit=img2img: 0 keeps the image, 1 ignores it"),
    "left": (0, integer(0), "edit=outpaint: pixels to add on the left (also right, top, bottom)"),
    "right": (0, integer(0), ""),
    "top": (0, integer(0), ""),
    "bottom": (0, integer(0), ""),
}
DEFAULTS = {key: default for key, (default, _, _) in KEYS.items()}


def usage() -> str:
    """The --help text: every key with its default and meaning."""
    lines = ["usage: python -m toolkit.sample ckpt=PATH out=DIR [key=value ...]", "", "keys (default):"]
    for key, (default, _, meaning) in KEYS.items():
        if meaning:
            shown = "" if default is None else f"={str(default).lower() if isinstance(default, bool) else default}"
            lines.append(f"  {key + shown:<22} {meaning}")
    lines += ["", "A bad value prints one 'error: ...' line and exits with status 2; nothing is written."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments over DEFAULTS, each checked; raises ValueError naming the key."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(
            f"arguments are key=value pairs; got {bad}. Example: ckpt=last.ckpt out=samples n=16 (see --help)"
        )
    args, given = dict(DEFAULTS), []
    for item in argv:
        key, value = item.split("=", 1)
        if key not in KEYS:
            raise ValueError(f"unknown argument {key!r}; known: {', '.join(KEYS)} (--help says what they are)")
        args[key] = None if value.lower() in ("null", "none") and DEFAULTS[key] is None else KEYS[key][1](key, value)
        given.append(key)
    for key in ("ckpt", "out"):
        if args[key] is None:
            raise ValueError(f"{key}=... is required. Example: python -m toolkit.sample ckpt=last.ckpt out=samples")
    if args["seed"] + args["n"] - 1 > MAX_SEED:
        raise ValueError(f"seed={args['seed']} is too large: seed + n - 1 must be at most {MAX_SEED}")
    if args["prompt"] is not None and args["prompts"] is not None:
        raise ValueError("give prompt= (one prompt for all samples) or prompts=FILE (one a line), not both")
    edit_options = [f"{key}=" for key in EDIT_OPTIONS if key in given]
    if args["edit"] is None and edit_options:
        raise ValueError(f"{', '.join(edit_options)} only apply to edits; add edit=inpaint, outpaint or img2img")
    return args


# --- checks that need torch or the model -------------------------------------------------------


def check_device(name: str) -> None:
    """A device this machine has, or ValueError saying what to use instead."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device={name} but CUDA is not available on this machine (torch {torch.__version__}, {build}); "
                "use device=cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={name} but MPS is not available on this machine; use device=cpu")
    elif device.type != "cpu":
        raise ValueError(f"device={name} is not supported; use cpu, cuda, cuda:N or mps")


def resolve_label(
    value: str | None, class_names: list[str] | None, num_classes: int, takes_prompts: bool = False
) -> int | None:
    """``label=`` as a class index: a class name of the model, else an index into its sorted names."""
    if value is None:
        return None
    if not num_classes:
        instead = ' and takes prompts instead (prompt="...")' if takes_prompts else ""
        raise ValueError(f"label={value} given but this checkpoint is unconditional (no classes){instead}; drop label=")
    names = [str(name) for name in class_names or range(num_classes)]
    listing = ", ".join(name if name == str(index) else f"{name} ({index})" for index, name in enumerate(names))
    by_name = {name: index for index, name in enumerate(names)}
    folded = {name.casefold(): index for name, index in by_name.items()}
    if value in by_name or value.casefold() in folded:
        return by_name.get(value, folded.get(value.casefold()))
    try:
        index = int(value)
    except ValueError:
        raise ValueError(f"label={value} is not a class of this model; use a name or index: {listing}") from None
    if not 0 <= index < num_classes:
        raise ValueError(f"label={index} is out of range: this model has {num_classes} classes: {listing}")
    return index


def read_prompts(path: str) -> list[str]:
    """The prompts of a ``prompts=`` file: one a line, surrounding white space and blank lines dropped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"prompts={path} is not a file; give a text file with one prompt a line")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts={path} holds no prompt; write one prompt a line")
    return prompts


def sample_prompts(args: dict) -> list[str] | None:
    """One prompt per sample: ``prompt`` n times, or each line of the ``prompts`` file n times."""
    if args["prompts"] is not None:
        return [prompt for prompt in read_prompts(args["prompts"]) for _ in range(args["n"])]
    return None if args["prompt"] is None else [args["prompt"]] * args["n"]


def check_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new or empty, or (with overwrite) an earlier sample folder."""
    from toolkit.domains.base import SAMPLES_FILE

    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file; give a folder path")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not held:
        return
    example = f"{len(held)} entries, e.g. {', '.join(held[:3])}"
    if not overwrite:
        raise ValueError(
            f"out={out} is not empty ({example}); sample into a new folder, or pass overwrite=true to replace "
            "earlier samples there"
        )
    if SAMPLES_FILE not in held:
        raise ValueError(
            f"out={out} holds files that are not toolkit samples (no {SAMPLES_FILE}; {example}); overwrite=true "
            "only replaces an earlier sample folder: choose a new folder"
        )


def write_atomically(out: Path, overwrite: bool, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Run ``write(folder)`` into a hidden folder next to ``out``, then swap it in for ``out`` (an
    earlier sample folder is removed as a whole). On any error nothing is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as staging:
        staging.mkdir()
        paths = write(staging)
        check_out(out, overwrite)  # again: another process may have written there meanwhile
    return [out / path.relative_to(staging) for path in paths]


# --- the command -------------------------------------------------------------------------------


def run(args: dict) -> list[Path]:
    """Sample as ``args`` (from ``parse_args``) say and write the files; returns their paths."""
    from toolkit.module import load_module  # Lightning loads slowly: not for --help and bad arguments

    check_device(args["device"])
    prompts = sample_prompts(args)
    module = load_module(args["ckpt"], map_location=args["device"])
    domain = module.domain
    n = args["n"] if prompts is None else len(prompts)
    if args["seed"] + n - 1 > MAX_SEED:
        raise ValueError(f"seed={args['seed']} is too large for {n} samples: seed + samples - 1 must be <= {MAX_SEED}")
    label = resolve_label(args["label"], domain.class_names, domain.num_classes, domain.text_encoder is not None)
    if args["guidance"] is not None and not domain.num_classes and domain.text_encoder is None:
        raise ValueError(f"guidance={args['guidance']} given but this checkpoint is unconditional; drop guidance=")
    extra, shape = {}, None
    if args["edit"] is not None:
        options = {k: args[k] for k in domain.edit_options if args.get(k) is not None}
        extra = domain.edit_inputs(args["edit"], n, **options)
        shape = extra.pop("shape", None)  # an edit may change the sample size (outpainting)
    out = Path(args["out"])
    check_out(out, args["overwrite"])
    result = module.generate(
        n,
        seed=args["seed"],
        labels=None if label is None else torch.full((n,), label, dtype=torch.long),
        method=args["sampler"],
        steps=args["steps"],
        guidance=args["guidance"],
        **({} if args["guidance_interval"] is None else {"guidance_interval": args["guidance_interval"]}),
        trajectory_every=args["trajectory_every"],
        progress=True,
        shape=shape,
        prompt=prompts,
        negative_prompt=args["negative_prompt"],
        **extra,
    )

    def write(folder: Path) -> list[Path]:
        return domain.save(
            result["x"], folder, result["labels"], result["seeds"], result["trajectory"], prompts=result["prompts"]
        )

    return write_atomically(out, args["overwrite"], write)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help", "help"} & set(argv):
        print(usage())
        return
    try:
        args = parse_args(argv)
        paths = run(args)
    except (ValueError, OSError) as error:
        fail(str(error))
    except torch.OutOfMemoryError:
        fail(f"out of memory on device={args['device']}; lower n or use device=cpu")
    except KeyboardInterrupt:
        print("interrupted: nothing was written to out", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"wrote {len(paths)} files to {args['out']}")


if __name__ == "__main__":
    main()
