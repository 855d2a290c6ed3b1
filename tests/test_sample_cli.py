"""The sample CLI: every user error is one ``error: ...`` line with exit status 2 and nothing
written; ``out`` never mixes two runs; class names as labels; ``--help``."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_untrained_checkpoint

from toolkit import sample
from toolkit.domains.image import ImageDomain
from toolkit.module import load_module

TINY = ["domain.net.base_channels=16", "domain.net.channel_mults=[1,2]", "domain.net.attention_levels=[]"]
FAST = ["n=2", "steps=2", "trajectory_every=1"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny image checkpoints: digits (classes '0'..'9'), a folder model with the class
    names of a folder sorted by name, and an unconditional one."""
    folder = tmp_path_factory.mktemp("checkpoints")
    named = ["domain.root=/nowhere", "domain.class_names=[one,three,two]"]
    return {
        "digits": save_untrained_checkpoint(folder / "digits.ckpt", TINY),
        "named": save_untrained_checkpoint(folder / "named.ckpt", [*TINY, *named]),
        "unconditional": save_untrained_checkpoint(folder / "uncond.ckpt", [*TINY, "domain.conditional=false"]),
    }


def fails(capsys, argv, *fragments) -> str:
    """Run the CLI expecting a user error: status 2, one ``error:`` line holding ``fragments``."""
    with pytest.raises(SystemExit) as exit_info:
        sample.main(argv)
    assert exit_info.value.code == 2
    lines = [line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith("sampling (")]  # the progress bar
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    err = lines[0]
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "no staging folder is left"


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["empty file", "bad.ckpt"]),
        (b"model weights, honest\n", ["not a PyTorch checkpoint", "bad.ckpt", "toolkit.train"]),
        (b"PK\x03\x04 a cut-off zip", ["not a readable PyTorch checkpoint", "bad.ckpt"]),
        (b"\x80\x04 a cut-off pickle", ["not a readable PyTorch checkpoint", "bad.ckpt"]),
    ],
)
def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys, content, fragments):
    (tmp_path / "bad.ckpt").write_bytes(content)
    fails(capsys, [f"ckpt={tmp_path / 'bad.ckpt'}", f"out={tmp_path / 'out'}"], *fragments)
    nothing_written(tmp_path / "out")


def test_checkpoint_missing_a_folder_or_not_a_toolkit_one(tmp_path, capsys):
    out = tmp_path / "out"
    fails(capsys, [f"ckpt={tmp_path / 'missing.ckpt'}", f"out={out}"], "missing.ckpt does not exist")
    fails(capsys, [f"ckpt={tmp_path}", f"out={out}"], "is a folder", "checkpoints/last.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    fails(capsys, [f"ckpt={tmp_path / 'plain.pt'}", f"out={out}"], "plain.pt is a PyTorch file but not a toolkit")
    nothing_written(out)


def test_weights_that_do_not_fit_the_config(tmp_path, capsys, checkpoints):
    checkpoint = torch.load(checkpoints["digits"], weights_only=True)
    checkpoint["hyper_parameters"]["config"]["domain"]["net"]["base_channels"] = 8
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match="edited.ckpt: its weights do not fit.*size mismatch"):
        load_module(tmp_path / "edited.ckpt")
    fails(capsys, [f"ckpt={tmp_path / 'edited.ckpt'}", f"out={tmp_path / 'out'}"], "weights do not fit")
    nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("argument", "fragments"),
    [
        ("guidance=abc", ["guidance=abc is not a number"]),
        ("guidance=-1", ["guidance=-1", ">= 0"]),
        ("steps=0", ["steps=0", "positive whole number"]),
        ("n=0", ["n=0", "positive whole number"]),
        ("n=2.5", ["n=2.5 is not a whole number"]),
        ("seed=-1", ["seed=-1", "non-negative"]),
        (f"seed={2**63 - 1}", ["too large"]),
        ("sampler=dpm_fast", ["unknown sampler 'dpm_fast'", "dpmpp_2m"]),
        ("overwrite=maybe", ["overwrite=maybe is not true or false"]),
        ("seeed=3", ["unknown argument 'seeed'", "--help"]),
        ("image=in.png", ["image= only apply to edits", "edit=inpaint"]),
        ("device=cuda:x", ["device=cuda:x is not a device"]),
        ("device=tpu", ["device=tpu is not"]),
    ],
)
def test_bad_values_name_the_key(tmp_path, capsys, checkpoints, argument, fragments):
    fails(capsys, [f"ckpt={checkpoints['digits']}", f"out={tmp_path / 'out'}", argument], *fragments)
    nothing_written(tmp_path / "out")


def test_required_keys_and_plain_words(tmp_path, capsys, checkpoints):
    fails(capsys, [f"ckpt={checkpoints['digits']}"], "out=... is required")
    fails(capsys, [], "ckpt=... is required")
    fails(capsys, ["--ckpt", "last.ckpt"], "key=value pairs", "'--ckpt'")


def test_cuda_without_cuda(tmp_path, capsys, checkpoints, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails(capsys, [f"ckpt={checkpoints['digits']}", f"out={tmp_path / 'out'}", "device=cuda"], "device=cuda", "cpu")
    nothing_written(tmp_path / "out")


def test_labels_by_name_or_index(tmp_path, capsys, checkpoints):
    ckpt = f"ckpt={checkpoints['named']}"
    sample.main([ckpt, f"out={tmp_path / 'by_name'}", "label=three", *FAST])
    sample.main([ckpt, f"out={tmp_path / 'by_index'}", "label=1", *FAST])
    by_name, by_index = (np.load(tmp_path / name / "samples.npz") for name in ("by_name", "by_index"))
    assert by_name["labels"].tolist() == [1, 1] and list(by_name["class_names"]) == ["one", "three", "two"]
    np.testing.assert_array_equal(by_name["x"], by_index["x"])
    # digits: the class names are the digits themselves, so label=7 is the digit seven
    sample.main([f"ckpt={checkpoints['digits']}", f"out={tmp_path / 'seven'}", "label=7", *FAST])
    assert np.load(tmp_path / "seven" / "samples.npz")["labels"].tolist() == [7, 7]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("which", "label", "fragments"),
    [
        ("named", "four", ["label=four is not a class", "one (0), three (1), two (2)"]),
        ("named", "3", ["label=3 is out of range", "3 classes"]),
        ("named", "-1", ["label=-1 is out of range"]),
        ("digits", "10", ["label=10 is out of range", "0, 1, 2"]),
        ("unconditional", "0", ["unconditional", "drop label="]),
    ],
)
def test_bad_labels_list_the_classes(tmp_path, capsys, checkpoints, which, label, fragments):
    fails(capsys, [f"ckpt={checkpoints[which]}", f"out={tmp_path / 'out'}", f"label={label}", *FAST], *fragments)
    nothing_written(tmp_path / "out")


def test_guidance_on_an_unconditional_model(tmp_path, capsys, checkpoints):
    argv = [f"ckpt={checkpoints['unconditional']}", f"out={tmp_path / 'out'}", "guidance=2", *FAST]
    fails(capsys, argv, "guidance=2.0", "unconditional")
    nothing_written(tmp_path / "out")


def test_out_holding_other_files_is_refused(tmp_path, capsys, checkpoints):
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    argv = [f"ckpt={checkpoints['digits']}", f"out={out}", *FAST]
    fails(capsys, argv, f"out={out} is not empty", "holiday.jpg", "new folder", "overwrite=true")
    fails(capsys, [*argv, "overwrite=true"], "not toolkit samples", "choose a new folder")
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"] and (out / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    fails(capsys, [f"ckpt={checkpoints['digits']}", f"out={tmp_path / 'file'}"], "is a file")


def test_overwrite_replaces_earlier_samples_without_leftovers(tmp_path, capsys, checkpoints):
    out = tmp_path / "out"
    common = [f"ckpt={checkpoints['digits']}", f"out={out}", "steps=2", "trajectory_every=0"]
    sample.main([*common, "n=5"])
    capsys.readouterr()
    assert (out / "sample_0004.png").is_file() and not (out / "strip.png").exists()
    fails(capsys, [*common, "n=2"], "is not empty")
    assert np.load(out / "samples.npz")["x"].shape[0] == 5, "the refused call changed nothing"
    sample.main([*common, "n=2", "overwrite=true", "trajectory_every=1"])
    assert f"wrote 5 files to {out}" in capsys.readouterr().out
    expected = {"sample_0000.png", "sample_0001.png", "grid.png", "strip.png", "samples.npz"}
    assert {p.name for p in out.iterdir()} == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging or old folder is left"
    empty = tmp_path / "empty"
    empty.mkdir()
    sample.main([*common[:1], f"out={empty}", "n=1", "steps=2"])
    assert (empty / "samples.npz").is_file()


def test_a_failure_while_writing_leaves_nothing(tmp_path, capsys, checkpoints, monkeypatch):
    def broken_save(self, x, out_dir, *args, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "sample_0000.png").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(ImageDomain, "save", broken_save)
    out = tmp_path / "new" / "out"
    fails(capsys, [f"ckpt={checkpoints['digits']}", f"out={out}", *FAST], "No space left on device")
    nothing_written(out)


def test_ctrl_c_while_writing_leaves_nothing(tmp_path, capsys, checkpoints, monkeypatch):
    def interrupted_save(self, x, out_dir, *args, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "samples.npz").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageDomain, "save", interrupted_save)
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"ckpt={checkpoints['digits']}", f"out={tmp_path / 'out'}", *FAST])
    assert exit_info.value.code == 130 and "nothing was written" in capsys.readouterr().err
    nothing_written(tmp_path / "out")


def test_help_lists_the_keys_with_defaults(capsys):
    for flag in ("--help", "-h"):
        sample.main([flag])
        text = capsys.readouterr().out
        for key in sample.KEYS:
            assert f"  {key}" in text or key in ("right", "top", "bottom")
        assert "n=16" in text and "seed=0" in text and "overwrite=false" in text and "label=three" in text


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    """As a user runs it: a real process, no traceback, status 2, out not created."""
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "toolkit.sample", f"ckpt={tmp_path / 'notes.ckpt'}", f"out={tmp_path / 'out'}"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'notes.ckpt'} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
        "pass a .ckpt written by python -m toolkit.train"
    ]
    nothing_written(tmp_path / "out")
    helped = subprocess.run([*argv[:3], "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert helped.returncode == 0 and "trajectory_every=2" in helped.stdout


@pytest.mark.parametrize("steps", [0, -3])
def test_generate_rejects_steps_below_one_instead_of_using_the_default(checkpoints, steps):
    from toolkit.module import load_module

    module = load_module(checkpoints["digits"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        module.generate(2, seed=0, steps=steps)
