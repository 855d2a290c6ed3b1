"""Run folders, resuming and train-CLI errors, on tiny time-series runs through the real CLI."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TS_NET
from omegaconf import OmegaConf

from toolkit import train as train_cli
from toolkit.domains.data import ResumableLoader, TensorDictDataset
from toolkit.train import claim_run_dir, compose_config, resume_config, train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY_TS = [
    "domain=timeseries",
    "domain.source=synthetic",
    "domain.window=16",
    *TINY_TS_NET,
    "data.batch_size=32",  # 4 batches an epoch
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "preview.n=2",
    "final_samples.n=2",
    "sampler.steps=2",
    "ema.start_step=0",
]


def _interruptible() -> None:
    """Ctrl-C's default action in the child: a test run started in the background by a
    non-interactive shell (as CI may be) inherits SIGINT ignored, and Python keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    command = [sys.executable, "-m", "toolkit.train", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_interruptible,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def test_resumable_loader_continues_the_epoch_and_the_next_ones():
    def loader():
        data = TensorDictDataset({"x": torch.arange(10)})
        return ResumableLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))

    def epochs(source, n):
        return [[b["x"].tolist() for b in source] for _ in range(n)]

    whole = epochs(loader(), 3)
    assert whole[0] != whole[1], "each epoch has its own order"
    for consumed in (1, 4):  # mid-epoch, and at the end of the first epoch (4 batches an epoch)
        first = loader()
        iterator, seen = iter(first), []
        for _ in range(consumed):
            seen.append(next(iterator)["x"].tolist())
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        rest = epochs(resumed, 3 if consumed < 4 else 2)
        assert seen + [b for epoch in rest for b in epoch] == [b for epoch in whole for b in epoch]


def test_claim_run_dir_gives_every_claimant_its_own_folder(tmp_path):
    base = tmp_path / "runs" / "image" / "2026-01-01_00-00-00"
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(claim_run_dir(base))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in claimed) == sorted([base.name] + [f"{base.name}_{i}" for i in range(1, 8)])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    assert claim_run_dir(foreign) == tmp_path / "foreign_1", "a folder with someone's files is not taken"
    assert not (foreign / ".hydra").exists()


def test_train_from_python_uses_the_folder_it_is_given(tmp_path):
    """Scripts (Imputer.fit, benchmarks) pick their folder and may put files there first."""
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    steps = ["trainer.max_steps=1", "trainer.val_check_interval=1", "checkpoint.every_n_steps=1"]
    assert train(compose_config([*TINY_TS, *steps]), run_dir) == run_dir / "checkpoints" / "last.ckpt"
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and (run_dir / "config.yaml").is_file()


def test_two_runs_started_together_keep_two_complete_folders(tmp_path):
    """Both ask for the same folder at the same moment (a stronger clash than the same second)."""
    same = tmp_path / "runs" / "same"
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_steps=2"]
    runs = [start(*TINY_TS, *steps, f"seed={seed}", f"hydra.run.dir={same}") for seed in (1, 2)]
    outputs = [finish(run) for run in runs]
    folders = sorted(p.name for p in same.parent.iterdir())
    assert folders == ["same", "same_1"], outputs
    seeds = set()
    for folder in (same, same.with_name("same_1")):
        config = OmegaConf.load(folder / "config.yaml")
        seeds.add(config.seed)
        assert f"seed={config.seed}" in OmegaConf.load(folder / ".hydra" / "overrides.yaml")
        assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        assert (folder / "samples" / "samples.npz").is_file() and (folder / "previews" / "step_000002.png").is_file()
        assert len(list(folder.glob("logs/*/metrics.csv"))) == 1
    assert seeds == {1, 2}
    assert sorted(f"run folder: {p}" in "".join(outputs) for p in (same, same.with_name("same_1"))) == [True, True]


def test_multirun_jobs_get_their_own_folders(tmp_path):
    sweep = tmp_path / "sweep"
    steps = ["trainer.max_steps=1", "trainer.val_check_interval=1", "checkpoint.every_n_steps=1"]
    finish(start("-m", *TINY_TS, *steps, "seed=1,2", f"hydra.sweep.dir={sweep}"))
    assert [OmegaConf.load(sweep / job / "config.yaml").seed for job in ("0", "1")] == [1, 2]
    assert all((sweep / job / "checkpoints" / "last.ckpt").is_file() for job in ("0", "1"))


def test_kill_9_and_resume_match_an_uninterrupted_run(tmp_path):
    """A run killed (SIGKILL) after its step-7 checkpoint and resumed from that checkpoint alone,
    with nothing but ckpt_path on the command line, ends where a run that never stopped ends:
    same step, same weights (raw and averaged), bit for bit. Step 7 is mid-epoch (4 batches an
    epoch) and a validation follows it in the uninterrupted run, not in the resumed one."""
    steps = ["trainer.max_steps=24", "trainer.val_check_interval=7", "checkpoint.every_n_steps=7", "seed=3"]
    killed = tmp_path / "killed"
    run = start(*TINY_TS, *steps, f"hydra.run.dir={killed}")
    checkpoint = killed / "checkpoints" / "step_000007.ckpt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    output, _ = run.communicate()
    assert checkpoint.exists(), output[-3000:]
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert OmegaConf.load(killed / "config.yaml").trainer.max_steps == 24, "config.yaml is written at the start"
    assert not (killed / "samples").exists()

    finish(start(f"ckpt_path={checkpoint}"))
    whole = train(compose_config([*TINY_TS, *steps]), tmp_path / "whole")

    resumed = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(whole, weights_only=True)
    assert resumed["global_step"] == reference["global_step"] == 24
    differences = {
        part: max((resumed[part][k] - reference[part][k]).abs().max().item() for k in reference[part])
        for part in ("state_dict", "current_model_state")
    }
    print(f"max weight difference, resumed vs uninterrupted: {differences}")
    assert differences == {"state_dict": 0.0, "current_model_state": 0.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "whole"], "the resume stayed in its folder"
    assert (killed / "checkpoints" / "step_000021.ckpt").is_file(), "the run's own checkpoint.every_n_steps"
    assert (killed / "samples" / "samples.npz").is_file() and (killed / "logs" / "version_1" / "metrics.csv").is_file()
    assert list((killed / ".hydra").glob("overrides_resume_0.yaml"))


def test_ctrl_c_before_the_first_checkpoint_keeps_the_folder_and_its_config(tmp_path):
    run_dir = tmp_path / "run"
    run = start(*TINY_TS, "trainer.max_steps=100000", "checkpoint.every_n_steps=100000", f"hydra.run.dir={run_dir}")
    deadline = time.monotonic() + 600
    while not (run_dir / "config.yaml").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=600)  # a loaded machine can take minutes to shut down
    assert OmegaConf.load(run_dir / "config.yaml").trainer.max_steps == 100000, output[-2000:]
    assert not list(run_dir.glob("checkpoints/*.ckpt"))


def test_resume_config_takes_the_checkpoint_and_only_the_given_keys(tmp_path):
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_steps=1", "seed=5"]
    last = train(compose_config([*TINY_TS, *steps]), tmp_path / "run")
    groups = ["domain", "trainer", "sampler", "schedule", "experiment"]
    overrides = [f"ckpt_path={last}", "trainer.max_steps=4", "~final_samples.seed"]
    composed = compose_config(overrides)  # composed with the default domain (image), as Hydra would
    config = resume_config(composed, overrides, groups)
    assert config.domain._target_.endswith("TimeSeriesDomain") and config.domain.net.channels == 16
    assert config.trainer.max_steps == 4 and config.checkpoint.every_n_steps == 1 and config.seed == 5
    assert config.ckpt_path == str(last) and "seed" not in config.final_samples
    with pytest.raises(ValueError, match="trainer=ddp: a resumed run keeps its config groups"):
        resume_config(
            compose_config([f"ckpt_path={last}", "trainer=ddp"]), [f"ckpt_path={last}", "trainer=ddp"], groups
        )
    with pytest.raises(ValueError, match="domain=image"):
        resume_config(composed, [f"ckpt_path={last}", "domain=image"], groups)


@pytest.fixture
def bad_data(tmp_path):
    from PIL import Image

    for name in ("empty", "corrupt", "grey"):
        (tmp_path / name).mkdir()
    (tmp_path / "corrupt" / "a.png").write_text("not a picture")
    Image.new("L", (16, 16)).save(tmp_path / "grey" / "a.png")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    return tmp_path


CASES = {
    "empty folder": (["domain.root={d}/empty"], "no PNG/JPEG images in {d}/empty"),
    "corrupt PNG": (["domain.root={d}/corrupt"], "{d}/corrupt/a.png"),
    "grey file, 3 channels": (["domain.root={d}/grey", "domain.channels=3"], "{d}/grey/a.png is grey"),
    "resolution 25": (["domain.resolution=25"], "resolution 25"),
    "misspelt key": (["trainer.max_stpes=5"], "trainer.max_stpes"),
    "unknown option": (["domain=imagez"], "domain/imagez"),
    "bad value": (["optim.lr=-1"], "optim.lr must be > 0"),
    "unknown trainer argument": (["+trainer.foo=1"], "trainer.foo is not an argument"),
    "bad trainer value (after the folder is claimed)": (["trainer.precision=17"], "Precision 17 is invalid"),
    "missing checkpoint": (["ckpt_path={d}/missing.ckpt"], "{d}/missing.ckpt does not exist"),
    "not a checkpoint": (["ckpt_path={d}/notes.ckpt"], "{d}/notes.ckpt is not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_prints_one_short_error_and_leaves_no_folder(case, bad_data, monkeypatch, capsys):
    arguments, expected = CASES[case]
    run_dir = bad_data / "run"
    argv = [a.format(d=bad_data) for a in arguments]
    monkeypatch.setattr(
        sys, "argv", ["train", *argv, f"hydra.run.dir={run_dir}", "trainer.max_steps=2", "ema.start_step=0"]
    )
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[0].startswith("error: ") and expected.format(d=bad_data) in err[0] and len(err) <= 3, err
    assert not run_dir.exists()


def test_a_failed_start_leaves_no_empty_parent_folders(bad_data, monkeypatch, capsys):
    """The default layout runs/<domain>/<time> under the working directory: nothing of it stays."""
    monkeypatch.chdir(bad_data)
    (bad_data / "keep").mkdir()
    monkeypatch.setattr(sys, "argv", ["train", "domain.resolution=25", "hydra.run.dir=runs/image/x"])
    with pytest.raises(SystemExit):
        train_cli.main()
    assert "resolution 25" in capsys.readouterr().err
    assert not (bad_data / "runs").exists() and (bad_data / "keep").is_dir()


def test_help_lists_groups_and_keys():
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.train", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for text in ("domain: audio, image, pointcloud, timeseries", "ckpt_path", "trainer.*", "max_steps:"):
        assert text in result.stdout
