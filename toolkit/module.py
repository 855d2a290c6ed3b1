"""The one LightningModule every domain trains with.

It holds the domain adapter (built from config), its denoiser network, the schedule and the
loss settings; the sampler is chosen at generation time. Its hyperparameters are the run's whole
resolved config as plain Python types, so a checkpoint rebuilds everything it needs and loads
with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor

from toolkit.core import loss, sampler, schedule, tune
from toolkit.core.denoiser import PREDICTIONS, Denoiser
from toolkit.domains.base import Domain
from toolkit.files import atomic_path

FUSED_ADAMW_DEVICES = ("cpu",)  # one fused update kernel: 0.9 ms a step of the time-series net, 4.5 ms unfused


def build_domain(domain_cfg: dict) -> Domain:
    """Instantiate the domain named by ``domain._target_``; the net config stays a plain dict."""
    try:
        return hydra.utils.instantiate(domain_cfg, _recursive_=False, _convert_="all")
    except hydra.errors.InstantiationException as error:
        if isinstance(error.__cause__, (ValueError, OSError)):
            raise error.__cause__ from None  # the domain's own message says what is wrong
        raise ValueError(f"cannot build domain {domain_cfg.get('_target_')}: {error.__cause__ or error}") from error


def check_choice(section: str, key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{key}={value!r} is not valid; choose one of {sorted(choices)}")


def check_config(config: dict) -> None:
    """Fail early, naming the key, on values the run would otherwise trip over later."""
    check_choice("schedule", "name", config["schedule"]["name"], schedule.SCHEDULES)
    check_choice("loss", "target", config["loss"]["target"], PREDICTIONS)
    check_choice("loss", "weighting", config["loss"]["weighting"], loss.WEIGHTINGS)
    check_choice("sampler", "method", config["sampler"]["method"], sampler.SAMPLERS)
    if config["sampler"].get("spacing") is not None:
        check_choice("sampler", "spacing", config["sampler"]["spacing"], (*schedule.SPACINGS, "tuned"))
    for section, key in (("optim", "lr"), ("sampler", "steps"), ("data", "batch_size")):
        if not config[section][key] > 0:
            raise ValueError(f"{section}.{key} must be > 0, got {config[section][key]}")
    ema = config.get("ema") or {}
    if ema.get("decay") is not None and ema.get("start_step", 0) >= config["trainer"]["max_steps"] > 0:
        raise ValueError(
            f"ema.start_step={ema['start_step']} is not below trainer.max_steps={config['trainer']['max_steps']}: "
            "the averaged weights would never be updated; lower ema.start_step or set ema.decay=null"
        )
    if not 0 <= config["loss"].get("p_uncond", 0.0) < 1:
        raise ValueError(f"loss.p_uncond must be in [0, 1), got {config['loss']['p_uncond']}")
    every = (config.get("preview") or {}).get("every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"preview.every must be a whole number of validations >= 1 (1: each), got {every!r}")


class DiffusionModule(L.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        check_config(config)
        self.domain = build_domain(config["domain"])
        # What the domain learned from data (e.g. normalisation) travels with the checkpoint.
        config = {**config, "domain": {**config["domain"], **self.domain.checkpoint_kwargs()}}
        self.save_hyperparameters({"config": config})
        self.config = config
        self.net = self.domain.build_net()
        self.validations_seen = 0  # previews every preview.every validations, counted from the run's (re)start
        options = {k: v for k, v in config["schedule"].items() if k != "name"}
        self.schedule = schedule.get(config["schedule"]["name"], **options)

    # --- training -------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Tensor], generator: torch.Generator | None, drop_cond: bool) -> Tensor:
        cfg = self.config["loss"]
        tb = self.domain.training_batch(batch, generator)
        cond = self.drop_cond(tb.cond, cfg.get("p_uncond", 0.0), generator) if drop_cond else tb.cond
        return loss.diffusion_loss(
            self.net,
            tb.x,
            self.schedule,
            target=cfg["target"],
            weighting=cfg["weighting"],
            mask=tb.loss_mask,
            cond=cond,
            generator=generator,
            min_snr_gamma=cfg.get("min_snr_gamma", 5.0),
        )

    def drop_cond(self, cond: dict[str, Tensor], p: float, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Condition dropout for classifier-free guidance: each sample's conditioning is replaced by
        the domain's null conditioning (``Domain.null_cond``) with probability ``p``, for every key
        the null differs in. No random draw when nothing can be dropped."""
        null = self.domain.null_cond(cond)
        keys = [k for k in cond if null[k] is not cond[k]]
        if p <= 0 or not keys:
            return cond
        n = cond[keys[0]].shape[0]
        drop = torch.rand((n,), device=self.device, generator=generator) < p
        return {**cond, **{k: torch.where(drop.view(n, *[1] * (cond[k].ndim - 1)), null[k], cond[k]) for k in keys}}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        value = self._loss(batch, None, drop_cond=True)
        self.log("train/loss", value, prog_bar=True, batch_size=batch["x"].shape[0])
        return value

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # Fixed times, noise and masks per batch, so validation losses compare across steps.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        value = self._loss(batch, generator, drop_cond=False)
        self.log("val/loss", value, prog_bar=True, batch_size=batch["x"].shape[0], sync_dist=True)
        return value

    def on_validation_epoch_end(self) -> None:
        """A preview of samples (drawn with the averaged weights when EMA is on) every ``preview.every``
        validations (default 1: each); a model trained on captions draws them for ``preview.prompts`` in
        turn when given."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        settings = self.config.get("preview", {})
        self.validations_seen += 1
        if (self.validations_seen - 1) % settings.get("every", 1):
            return
        n = settings.get("n", 16)
        out = self.generate(n, seed=0, prompt=cycled(settings.get("prompts"), n))
        self.preview_samples = out["x"]  # scored for copies by callbacks.PreviewCopies
        path = Path(self.trainer.default_root_dir) / "previews" / f"step_{self.global_step:06d}.png"
        self.domain.preview(out["x"], path, out["labels"])
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                picture = np.asarray(Image.open(path).convert("RGB"))
                logger.experiment.add_image("preview", picture, self.global_step, dataformats="HWC")

    def configure_optimizers(self):
        cfg = self.config["optim"]
        opt = torch.optim.AdamW(
            self.net.parameters(),
            lr=cfg["lr"],
            weight_decay=cfg.get("weight_decay", 0.0),
            betas=tuple(cfg["betas"]),
            fused=self.device.type in FUSED_ADAMW_DEVICES or None,
        )
        warmup = max(1, int(cfg.get("warmup_steps", 0)))
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if cfg.get("decay", "constant") == "cosine" and total:
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- generation -----------------------------------------------------------------------

    def denoiser(self):
        """``D(x_t, t, **cond) -> x0_hat`` of this module's network, wrapped by the domain."""
        return self.domain.wrap_denoiser(Denoiser(self.net, self.schedule, self.config["loss"]["target"]))

    @torch.no_grad()
    def sampling_inputs(
        self,
        n: int,
        seed: int | list[int],
        labels: Tensor | None,
        guidance: float | None,
        cond: dict | None = None,
        inputs: dict | None = None,
        prompts: list[str] | None = None,
        negative_prompts: list[str] | None = None,
    ) -> tuple[tuple[int, ...], dict, dict]:
        """The sample shape, the conditioning and the guidance keywords of ``sampler.sample`` for
        ``n`` samples: the domain's (``Domain.sampling_inputs``, classes round-robin without
        ``labels``) on this module's device, or the given ``inputs`` as they are. ``prompts`` (one
        per sample) become ``cond["tokens"]``; guidance applies to labels and prompts alike, with
        ``negative_prompts`` (one per sample) in place of the empty prompt in the unconditional branch."""
        if inputs is None:
            inputs = self.domain.sampling_inputs(n, labels=labels, seed=seed if isinstance(seed, int) else seed[0])
            inputs = {k: _to(v, self.device) for k, v in inputs.items()}
        inputs = dict(inputs)
        cond = {**inputs.pop("cond", {}), **(cond or {})}
        if prompts is not None:
            cond["tokens"] = self.domain.tokenize(prompts).to(self.device)
        shape = tuple(inputs.pop("shape", (n, *self.domain.sample_shape)))
        if negative_prompts is not None and guidance in (None, 1.0):
            raise ValueError("negative_prompt only acts through guidance; give guidance > 1 (e.g. guidance=3)")
        if guidance is not None and guidance != 1.0 and ("label" in cond or "tokens" in cond):
            uncond = self.domain.null_cond(cond)
            if negative_prompts is not None:
                uncond["tokens"] = self.domain.tokenize(negative_prompts).to(self.device)
            inputs.update(guidance=guidance, uncond=uncond)
        return shape, cond, inputs

    def generate(
        self,
        n: int,
        seed: int | list[int] = 0,
        labels: Tensor | None = None,
        method: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        trajectory_every: int = 0,
        progress: bool = False,
        *,
        shape: tuple[int, ...] | None = None,
        batch_size: int | None = None,
        inputs: dict | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        **sampler_kwargs,
    ) -> dict:
        """Draw ``n`` samples in model space with the configured (or given) sampler settings.

        Returns a dict with ``x``, ``labels`` (or None), ``seeds``, ``prompts`` (one per sample, or
        None) and ``trajectory``: the clean estimates x0_hat every ``trajectory_every`` steps,
        [K, n, ...], ending with ``x`` (or None).
        ``prompt``: for a model trained on captions, a prompt for all samples or one per sample
        (without it, the empty prompt: unconditional); with ``guidance``, classifier-free guidance
        pushes away from the empty prompt, or from ``negative_prompt`` (one for all or one per sample).
        ``shape``: the batch shape ``(n, ...)`` when it is not the domain's (an edit such as
        outpainting sets its own). ``batch_size``: at most that many samples per sampler call; each
        sample comes from its own seed, so it is the same in any batch (up to the network's
        floating-point rounding, which on some devices depends on the batch size).
        ``inputs``: the samples' conditioning and known region (``cond``, ``known_mask``,
        ``known_values``) in place of the domain's (``Domain.sampling_inputs``; ``labels`` are then
        unused), e.g. the windows the imputer fills; they may stay on the CPU, as each batch is
        moved to the module's device on its own.
        ``sampler_kwargs`` (known_mask/known_values, x_init/strength, ...) go to the sampler.
        """
        cfg = self.config["sampler"]
        method = cfg["method"] if method is None else method
        steps = cfg["steps"] if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        guidance = cfg.get("guidance") if guidance is None else guidance
        sampler_kwargs = {**sampler_options(cfg, method, steps), **sampler_kwargs}
        if sampler_kwargs.get("strength", 1.0) < 1.0:
            sampler_kwargs.pop("times", None)  # image-to-image starts part-way: a named spacing
        prompts, negative_prompts = (
            self.prompt_list(prompt, n, "prompt"),
            self.prompt_list(negative_prompt, n, "negative_prompt"),
        )
        if negative_prompts is not None and prompts is None:
            prompts = [""] * n  # the conditional branch is then the empty prompt
        was_training = self.net.training
        self.net.eval()
        domain_shape, cond, inputs = self.sampling_inputs(
            n, seed, labels, guidance, sampler_kwargs.pop("cond", {}), inputs, prompts, negative_prompts
        )
        inputs.update(sampler_kwargs)
        shape = tuple(domain_shape if shape is None else shape)
        seeds = sampler.seeds_for(seed, n)
        parts = [slice(start, start + (batch_size or n)) for start in range(0, n, batch_size or n)]
        if len(parts) > 1:  # split per sample: broadcast inputs first take the batch's shape
            inputs = {
                k: v.expand(shape) if k in BROADCAST_INPUTS and isinstance(v, Tensor) else v for k, v in inputs.items()
            }
        try:
            results = [
                sampler.sample(
                    self.denoiser(),
                    (len(seeds[part]), *shape[1:]),
                    self.schedule,
                    method,
                    steps,
                    seeds[part],
                    cond=_to(_batch_part(cond, part, n), self.device),
                    trajectory_every=trajectory_every,
                    progress=progress,
                    device=self.device,
                    **_to(_batch_part(inputs, part, n), self.device),
                )
                for part in parts
            ]
        finally:
            self.net.train(was_training)
        if trajectory_every:
            x, trajectory = torch.cat([r[0] for r in results]), torch.cat([r[1].x0_hat for r in results], dim=1)
        else:
            x, trajectory = torch.cat(results), None
        return {"x": x, "labels": cond.get("label"), "seeds": seeds, "prompts": prompts, "trajectory": trajectory}

    def prompt_list(self, prompt: str | list[str] | None, n: int, key: str) -> list[str] | None:
        """``prompt`` as one string per sample (a single string is repeated), checked; None stays None."""
        if prompt is None:
            return None
        self.domain.require_text_encoder()
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(f"{key} must be one string or one per sample: {n} samples but {len(prompts)} prompts")
        return prompts


def cycled(prompts: list[str] | None, n: int) -> list[str] | None:
    """``n`` prompts taken from ``prompts`` in turn (previews and final samples of a captioned model);
    None without prompts."""
    return [prompts[i % len(prompts)] for i in range(n)] if prompts else None


# Sampler inputs that may broadcast over the batch (e.g. one mask for all samples).
BROADCAST_INPUTS = ("known_mask", "known_values", "x_init")


def _batch_part(value, part: slice, n: int):
    """The samples ``part`` of per-sample tensors (leading dimension ``n``), also inside dicts;
    other values as they are."""
    if isinstance(value, dict):
        return {k: _batch_part(v, part, n) for k, v in value.items()}
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n:
        return value[part]
    return value


def sampler_options(cfg: dict, method: str, steps: int) -> dict:
    """Keyword arguments for ``sampler.sample`` from the sampler config: ``guidance_interval``, ``spacing`` (with
    ``spacing=tuned``, the times for ``method`` and ``steps`` from ``grid_file``) and the method's
    own options (unipc's ``order``, ``variant``) when the configured method is the one used: a config
    composed from one sampler group with another ``sampler.method`` keeps only what that method takes."""
    options = {}
    if cfg.get("guidance_interval") is not None:
        options["guidance_interval"] = tuple(cfg["guidance_interval"])
    if cfg.get("spacing") == "tuned":
        if not cfg.get("grid_file"):
            raise ValueError(
                "sampler.spacing=tuned needs sampler.grid_file=<run>/tuned_steps.json (python -m toolkit.tune_steps)"
            )
        options["times"] = tune.load_grid(cfg["grid_file"], method, steps)
    elif cfg.get("spacing") is not None:
        options["spacing"] = cfg["spacing"]
    if method == cfg["method"]:
        options.update({k: cfg[k] for k in sampler.method_spec(method).options if cfg.get(k) is not None})
    return options


def _to(value, device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def read_checkpoint(path: str | Path) -> dict:
    """A toolkit checkpoint's contents, read with ``weights_only=True``. A missing file raises
    FileNotFoundError; a folder, an empty file, one that is not a PyTorch file and a PyTorch file that
    is not a toolkit checkpoint (no ``hyper_parameters.config`` and ``state_dict``) raise ValueError
    naming the file."""
    path = Path(path)
    if path.is_dir():
        example = path / "checkpoints" / "last.ckpt"
        raise ValueError(f"checkpoint {path} is a folder, not a file; pass the .ckpt inside it, e.g. {example}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .ckpt file (e.g. last.ckpt)")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is an empty file (0 bytes; an interrupted copy?); use another .ckpt")
    with path.open("rb") as file:
        start = file.read(4)
    if not start.startswith((b"PK\x03\x04", b"\x80")):  # torch writes zip archives (legacy: pickles)
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
            "pass a .ckpt written by python -m toolkit.train"
        )
    try:
        with warnings.catch_warnings():  # legacy pickles warn about their protocol before failing or not
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds (pickle, zip, EOF) for files that are not its own
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({_summary(error)}); "
            "pass a .ckpt written by python -m toolkit.train"
        ) from None
    config = checkpoint.get(DiffusionModule.CHECKPOINT_HYPER_PARAMS_KEY, {}) if isinstance(checkpoint, dict) else {}
    config = config.get("config") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(
            f"{path} is a PyTorch file but not a toolkit checkpoint (no hyper_parameters.config and state_dict); "
            "pass a .ckpt from a run's checkpoints/ folder"
        )
    return checkpoint


def load_module(path: str | Path, map_location: str = "cpu") -> DiffusionModule:
    """A trained module from a checkpoint (read by ``read_checkpoint``), with the averaged (EMA)
    weights that Lightning's weight-averaging callback stores as the checkpoint's ``state_dict``.
    Weights that do not fit the config stored with them raise ValueError naming the file."""
    checkpoint = read_checkpoint(path)
    config = checkpoint[DiffusionModule.CHECKPOINT_HYPER_PARAMS_KEY]["config"]
    try:
        module = DiffusionModule(config)
    except KeyError as error:
        raise ValueError(
            f"checkpoint {path}: its config has no key {error}; was it written by another version?"
        ) from None
    except (ValueError, OSError) as error:
        raise ValueError(f"checkpoint {path}: {error}") from None
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path}: its weights do not fit the network its config describes ({_summary(error)}); "
            "the file is damaged or was edited"
        ) from None
    return module.to(map_location).eval()


def save_module(module: DiffusionModule, path: str | Path) -> Path:
    """Write ``module`` as a checkpoint in Lightning's format that ``load_module`` (and Lightning's
    ``DiffusionModule.load_from_checkpoint``) read: ``hyper_parameters.config`` and ``state_dict``,
    without optimiser state. Written atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        DiffusionModule.CHECKPOINT_HYPER_PARAMS_KEY: {"config": module.config},
        "pytorch-lightning_version": L.__version__,
    }
    with atomic_path(path) as partial:
        torch.save(checkpoint, partial)
    return path


def _summary(error: Exception) -> str:
    """The first two lines of an exception's message, shortened: enough to say what went wrong."""
    lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
    return " ".join(lines[:2])[:240]
