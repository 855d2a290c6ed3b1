"""Training entry point: ``python -m toolkit.train [domain=image] [key=value ...]``.

Hydra composes conf/; one output folder per run holds the resolved config, checkpoints
(``last.ckpt`` included), CSV and TensorBoard logs, preview pictures and the final samples.
Each run claims a folder of its own (``runs/<domain>/<time>``, ``_1``, ``_2``... when taken);
``ckpt_path=.../checkpoints/last.ckpt`` resumes that run in its own folder with its own config.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolkit import cli
from toolkit.callbacks import ForeachEMA, copy_report, trainer_arguments, training_callbacks
from toolkit.config import CONF_DIR, compose_config  # noqa: F401 (compose_config: its old home, still imported)
from toolkit.files import atomic_path, write_text_atomic
from toolkit.module import DiffusionModule, cycled, read_checkpoint

RUN_DIR_ENV = "TOOLKIT_RUN_DIR"  # "<pid>:<folder>" of rank 0, inherited by the DDP processes Lightning starts
USER_ERRORS = (ValueError, OSError, HydraException, OmegaConfBaseException, MisconfigurationException)


# --- run folders --------------------------------------------------------------------------


def claim_run_dir(requested: Path) -> Path:
    """A run folder no other run uses: ``requested`` if it is free, else ``requested_1``, ``_2``...

    The claim is the exclusive creation of the folder's ``.hydra/``, atomic on every file system,
    so runs started in the same second (or microsecond) never share a folder. A folder that holds
    files without ``.hydra/`` (not a run of ours) is not taken either.
    """
    for n in range(10_000):
        candidate = requested if n == 0 else requested.with_name(f"{requested.name}_{n}")
        try:
            (candidate / ".hydra").mkdir(parents=True)
        except FileExistsError:
            continue
        if any(p.name != ".hydra" for p in candidate.iterdir()):
            (candidate / ".hydra").rmdir()
            continue
        return candidate
    raise FileExistsError(f"no free run folder next to {requested}; clean up old runs or set hydra.run.dir")


def own_checkpoint_run(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or None."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).resolve()
    return path.parents[1] if path.parent.name == "checkpoints" else None


def write_atomic(config: dict | DictConfig, path: Path) -> None:
    """Save a config as YAML through a temporary file renamed into place, never half-written."""
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(config)))


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes in ``.hydra/`` (the run's config, Hydra's own, the overrides), written by
    us after the folder is claimed, so that two runs never write them into one folder."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    files = {"config.yaml": cfg, "hydra.yaml": {"hydra": hydra_cfg}, "overrides.yaml": hydra_cfg.overrides.task}
    for name, content in files.items():
        target = folder / name
        if target.exists():  # a resumed run keeps the files of its start; the resume's get a suffix
            target = folder / f"{target.stem}_resume_{len(list(folder.glob(target.stem + '_resume_*')))}.yaml"
        write_atomic(content, target)


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` if it is empty, then each parent inside the working directory
    (``runs/<domain>``, ``runs``) that is left empty: a failed start leaves no trace of itself."""
    cwd, folder = Path.cwd().resolve(), folder.resolve()
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty, or not there: everything above it stays
            return
        folder = folder.parent
        if cwd not in folder.parents:
            return


@contextlib.contextmanager
def removed_on_error(run_dir: Path, remove: bool) -> Iterator[None]:
    """Remove a freshly claimed run folder if the run fails with an error before its first
    checkpoint. A run stopped by the user (Ctrl-C: Lightning exits) keeps its folder and config."""
    try:
        yield
    except Exception:
        if remove and not any(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
            remove_empty_folders(run_dir.parent)
        raise


# --- resuming -----------------------------------------------------------------------------


def checkpoint_config(path: str | os.PathLike) -> dict:
    """The whole resolved config a checkpoint was trained with (its hyperparameters)."""
    return read_checkpoint(path)["hyper_parameters"]["config"]


def resume_config(composed: DictConfig, overrides: Sequence[str], groups: Sequence[str] = ()) -> DictConfig:
    """The config of the run that wrote ``composed.ckpt_path``, with the command-line
    ``overrides`` (as Hydra parsed them into ``composed``) on top; ``groups`` are the config group
    names. A run keeps its own config groups: changing one on resume is an error."""
    saved = checkpoint_config(composed.ckpt_path)
    config = OmegaConf.create(saved)
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in groups:
            if key == "domain" and composed.domain.get("_target_") == saved["domain"].get("_target_"):
                continue
            raise ValueError(
                f"{override.input_line}: a resumed run keeps its config groups; set keys instead "
                f"(e.g. {key}.<key>=value), or start a new run without ckpt_path"
            )
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(config, parent) if parent else config
            if node is not None and leaf in node:
                del node[leaf]
            continue
        OmegaConf.update(config, key, OmegaConf.select(composed, key), force_add=True)
    config.ckpt_path = str(composed.ckpt_path)
    return config


def domain_choice(target: str) -> str | None:
    """The ``conf/domain`` file whose domain is ``target`` (a class path)."""
    for path in sorted(Path(CONF_DIR, "domain").glob("*.yaml")):
        if OmegaConf.load(path).get("domain", {}).get("_target_") == target:
            return path.stem
    return None


def resume_arguments(argv: list[str]) -> list[str]:
    """Command-line arguments for Hydra: with ``ckpt_path=...`` of a run folder, Hydra's output
    goes to that folder and the domain is the checkpoint's (for composing the overrides)."""
    given = {arg.split("=", 1)[0].lstrip("+"): arg.split("=", 1)[1] for arg in argv if "=" in arg}
    ckpt = given.get("ckpt_path")
    if ckpt in (None, "", "null") or "," in ckpt:
        return argv
    saved = checkpoint_config(ckpt)
    extra = []
    run_dir = own_checkpoint_run(ckpt)
    if run_dir is not None and "hydra.run.dir" not in given:
        extra.append(f'hydra.run.dir="{run_dir}"')
    choice = domain_choice(saved["domain"].get("_target_", ""))
    if choice and "domain" not in given:
        extra.append(f"domain={choice}")
    return [*argv, *extra]


# --- training -----------------------------------------------------------------------------


class AtomicModelCheckpoint(ModelCheckpoint):
    """Writes each checkpoint to a temporary file and renames it into place, so a checkpoint on
    disk is never half-written, even if the run dies while saving."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        with atomic_path(filepath, commit=trainer.is_global_zero) as partial:  # rank 0 writes it
            trainer.save_checkpoint(partial, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("AtomicModelCheckpoint")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``last.ckpt`` holds the final step, also when it is not a multiple of every_n_steps
        (Lightning's own only saves it there when nothing was saved before)."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RandomStates(L.Callback):
    """Every global random state (torch, CUDA, numpy, Python) as it was after the last training
    step travels with the checkpoint and is in force when the next step starts. So a resumed run
    draws the same times, noise and masks as one that never stopped, and validations and previews
    in between cannot shift the training draws. (Saved from rank 0: under DDP every rank is seeded
    alike and draws alike.)"""

    def __init__(self) -> None:
        self.states: dict | None = None

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.states = _collect_rng_states()

    def on_train_batch_start(self, *args, **kwargs) -> None:
        if self.states is not None:
            _set_rng_states(self.states)

    def state_dict(self) -> dict:
        if self.states is None:
            return {}
        name, keys, *rest = self.states["numpy"]  # numpy's array as a tensor: loads with weights_only
        return {**self.states, "numpy": [name, torch.from_numpy(keys.astype(np.int64)), *rest]}

    def load_state_dict(self, state: dict) -> None:
        if state:
            name, keys, *rest = state["numpy"]
            self.states = {**state, "numpy": (name, keys.numpy().astype(np.uint32), *rest)}


def callbacks(config: dict, run_dir: Path) -> list[L.Callback]:
    found = [
        RandomStates(),
        AtomicModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step_{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=config["checkpoint"]["every_n_steps"],
            save_top_k=-1,
            save_last=True,
            enable_version_counter=False,  # a resumed run goes on writing its own last.ckpt
        ),
    ]
    if config["trainer"].get("enable_progress_bar", True):
        found.append(TQDMProgressBar(refresh_rate=10))
    ema = config.get("ema") or {}
    if ema.get("decay") is not None:
        found.append(ForeachEMA(decay=ema["decay"], update_starting_at_step=ema.get("start_step", 0)))
    return found + training_callbacks(config)


def check_trainer_keys(trainer: dict) -> None:
    """Every ``trainer.*`` key must be a Lightning Trainer argument (else Trainer raises a TypeError)."""
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "callbacks", "logger"}
    unknown = sorted(set(trainer) - accepted)
    if unknown:
        raise ValueError(
            f"trainer.{unknown[0]} is not an argument of Lightning's Trainer; "
            "see python -m toolkit.train --help and Lightning's Trainer documentation"
        )


def run_folder(requested: Path, ckpt_path: str | None, claim: bool) -> tuple[Path, bool]:
    """(the folder this process writes to, whether this call made it).

    With ``claim``, a new run claims a fresh folder (see ``claim_run_dir``) and a resume of
    ``<run>/checkpoints/*.ckpt`` into ``<run>`` continues that folder; without, ``requested`` is
    used as it is. DDP processes other than rank 0 use rank 0's folder."""
    if (_get_rank() or 0) > 0:
        parent, _, shared = os.environ.get(RUN_DIR_ENV, "").partition(":")
        if parent == str(os.getppid()):  # started by rank 0 (Lightning's DDP launcher), not a stale value
            return Path(shared), False
        # Started by srun/torchrun: Lightning hands rank 0's folder to every rank (checkpoints, logs
        # and previews are written by rank 0 only), so this rank claims nothing and leaves no folder.
        with contextlib.suppress(OSError):
            requested.rmdir()
        return requested, False
    if claim and own_checkpoint_run(ckpt_path) != requested.resolve():
        run_dir, made = claim_run_dir(requested), True
    else:
        run_dir, made = requested, not requested.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir.resolve()}"
    return run_dir, made


def train(cfg: DictConfig, run_dir: Path, claim: bool = False) -> Path:
    """Train one run in ``run_dir``; returns the path of its ``last.ckpt``.

    ``claim`` (the CLI): a new run takes ``run_dir`` only if no other run holds it, else the next
    free ``run_dir_1``, ``_2``...; a resume of a checkpoint of ``run_dir`` continues it. Without
    (scripts that choose their folder), ``run_dir`` is used as given. Config and data are checked
    before the folder is made, and a run that fails with an error before its first checkpoint
    removes the folder it made. ``config.yaml`` is written at the start."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    check_trainer_keys(config["trainer"])
    trainer_args = trainer_arguments(config["trainer"])
    module = DiffusionModule(config)
    datamodule = module.domain.datamodule(config["data"]["batch_size"], config["data"]["num_workers"], cfg.seed)
    run_dir, made = run_folder(Path(run_dir), cfg.ckpt_path, claim)
    rank_zero = (_get_rank() or 0) == 0
    with removed_on_error(run_dir, made and rank_zero):
        if rank_zero:
            save_hydra_files(cfg, run_dir)
            write_atomic(module.config, run_dir / "config.yaml")
        trainer = L.Trainer(
            **trainer_args,
            default_root_dir=str(run_dir),
            callbacks=callbacks(config, run_dir),
            logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tensorboard")],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.is_global_zero:
        if OmegaConf.load(run_dir / "config.yaml") != OmegaConf.create(module.config):
            write_atomic(module.config, run_dir / "config.yaml")
        final = config["final_samples"]
        prompts = cycled(config.get("preview", {}).get("prompts"), final["n"])
        out = module.generate(final["n"], seed=final["seed"], trajectory_every=2, prompt=prompts)
        with_prompts = {} if prompts is None else {"prompts": prompts}  # the time-series save takes none
        module.domain.save(
            out["x"], run_dir / "samples", out["labels"], out["seeds"], out["trajectory"], **with_prompts
        )
        copy_report(module, datamodule, out["x"], run_dir / "samples")
    return run_dir / "checkpoints" / "last.ckpt"


def fail(error: BaseException) -> None:
    """A user error as one short ``error: ...`` message (what is wrong first, then the detail)
    and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    text = str(error).split("Config search path")[0]  # Hydra's search path says nothing to users
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    cause = error.__cause__
    if isinstance(error, HydraException) and cause is not None and str(cause).strip():
        lines = [lines[0], str(cause).strip().splitlines()[0] + "; python -m toolkit.train --help lists the keys"]
    cli.fail(lines[0] if len(lines) == 1 else f"{lines[0]}\n  {' '.join(lines[1:])[:400]}")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    requested = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.ckpt_path:
            cfg = resume_config(cfg, hydra_cfg.overrides.task, list(hydra_cfg.runtime.choices))
        last = train(cfg, requested, claim=True)
    except USER_ERRORS as error:
        remove_empty_folders(requested)  # the empty folder Hydra made before the run could check its data
        fail(error)
    run_dir = last.parents[1]
    if (_get_rank() or 0) == 0:
        print(f"run folder: {run_dir}\nlast checkpoint: {last}\nsamples: {run_dir / 'samples'}")


def precheck(argv: list[str]) -> None:
    """Compose the config of a single run before Hydra does, so that a misspelt key or unknown
    option is reported as one ``error:`` line (Hydra itself prints several)."""
    if any(arg.startswith("-") for arg in argv):
        return  # --help, -m and other Hydra flags: Hydra handles them
    try:
        compose_config([arg for arg in argv if not arg.lstrip("+~").startswith(("hydra.", "hydra/"))])
    except USER_ERRORS as error:
        fail(error)


def main() -> None:
    """``python -m toolkit.train``: checks the arguments, then runs Hydra's entry point."""
    argv = sys.argv[1:]
    try:
        argv = resume_arguments(argv)
    except USER_ERRORS as error:
        fail(error)
    precheck(argv)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
