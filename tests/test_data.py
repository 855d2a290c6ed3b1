"""The data work the domains share: the class-folder scanner, the class-name check, the split and
the in-memory data module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.domains.data import (
    TensorDictDataModule,
    check_class_names,
    held_out_count,
    scan_class_folders,
    split_indices,
)

SUFFIXES = (".dat",)


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def scan(root: Path, conditional: bool = False):
    return scan_class_folders(root, SUFFIXES, conditional, what="test files")


def test_class_folders_are_searched_recursively_in_sorted_order(tmp_path: Path):
    touch(tmp_path / "b" / "2.dat", tmp_path / "b" / "deeper" / "1.dat", tmp_path / "a" / "1.DAT")
    files, labels, names = scan(tmp_path, conditional=True)
    assert names == ["a", "b"] and labels == [0, 1, 1]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.DAT", "b/2.dat", "b/deeper/1.dat"]


def test_flat_folder_is_one_unlabelled_set_unless_classes_are_required(tmp_path: Path):
    touch(tmp_path / "1.dat", tmp_path / "0.dat", tmp_path / ".hidden.dat")
    files, labels, names = scan(tmp_path)
    assert [f.name for f in files] == ["0.dat", "1.dat"] and labels == [0, 0] and names == []
    with pytest.raises(ValueError, match="no class sub-folders.*conditional=false"):
        scan(tmp_path, conditional=True)


def test_notes_are_ignored_other_files_are_an_error(tmp_path: Path):
    touch(tmp_path / "a" / "1.dat", tmp_path / "a" / "README.md", tmp_path / "a" / "LICENSE", tmp_path / "notes.txt")
    assert len(scan(tmp_path)[0]) == 1
    touch(tmp_path / "a" / "song.mp3")
    with pytest.raises(ValueError, match=r"unsupported file format '.mp3' for .*song.mp3; supported formats are .dat"):
        scan(tmp_path)


def test_bad_layouts_name_what_is_wrong(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist; set domain.root"):
        scan(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no test files in"):
        scan(tmp_path)
    touch(tmp_path / "a" / "1.dat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder 'empty' in .* has no test files"):
        scan(tmp_path)
    (tmp_path / "empty").rmdir()
    touch(tmp_path / "loose.dat")
    with pytest.raises(ValueError, match=r"both class sub-folders and loose test files \(e.g. loose.dat\)"):
        scan(tmp_path)


def test_class_names_must_match():
    check_class_names(Path("data"), ["a", "b"], ["a", "b"])
    check_class_names(Path("data"), None, [])
    with pytest.raises(ValueError, match=r"are \['b', 'a'\] but the domain was built for \['a', 'b'\]"):
        check_class_names(Path("data"), ["b", "a"], ["a", "b"])


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(10, 0.1, 1), (5, 0.01, 1), (3, 0.9, 2), (1, 0.5, 0), (8, 0, 0)]
)
def test_held_out_is_at_least_one_and_at_most_all_but_one(n: int, fraction: float, expected: int):
    assert held_out_count(n, fraction) == expected


def test_stratified_split_holds_out_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2])
    train, val = split_indices(len(labels), 0.2, seed=0, labels=labels)
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]
    assert sorted(train.tolist() + val.tolist()) == list(range(13))
    again = split_indices(len(labels), 0.2, seed=0, labels=labels)
    assert all(torch.equal(a, b) for a, b in zip(again, (train, val), strict=True))


def test_split_with_a_permutation_of_its_own():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    permutation = np.random.default_rng(0).permutation
    _, val = split_indices(6, 0.34, seed=0, labels=labels, permutation=permutation)
    rng = np.random.default_rng(0)
    expected = sorted([int(rng.permutation([0, 1, 2])[0]), int(rng.permutation([3, 4, 5])[0])])
    assert val.tolist() == expected


def test_val_fraction_is_checked():
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.0, seed=0)


def test_data_module_drops_the_last_partial_batch_only_when_there_is_more_than_one_batch():
    rows = {"x": torch.arange(10.0)}
    assert [len(b["x"]) for b in TensorDictDataModule(rows, rows, batch_size=4).train_dataloader()] == [4, 4]
    assert [len(b["x"]) for b in TensorDictDataModule(rows, rows, batch_size=10).train_dataloader()] == [10]
    assert [len(b["x"]) for b in TensorDictDataModule(rows, rows, batch_size=16).train_dataloader()] == [10]
    assert TensorDictDataModule(rows, {"x": torch.zeros(0)}, batch_size=4).val_dataloader() == []
