"""Data work shared by the domains: scanning a folder of class sub-folders, checking class names,
a fixed train/validation split, a LightningDataModule over dicts of equally long tensors (the batch
format of every domain) and the training loader that resumes mid-epoch with the same batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# Notes and metadata that may sit next to data files; every other file that is not data is an error.
NOTE_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".csv", ".yaml", ".yml", "")


def scan_class_folders(
    root: str | Path,
    suffixes: Sequence[str],
    conditional: bool,
    what: str,
    setting: str = "domain.root",
    ignored: Sequence[str] = NOTE_SUFFIXES,
) -> tuple[list[Path], list[int], list[str]]:
    """The data files under ``root`` with their labels and the sorted class names.

    One sub-folder per class (searched recursively, labels in sorted folder-name order), or, unless
    ``conditional`` requires classes, a flat folder of files (one unlabelled set: labels 0, no
    names). Hidden files are skipped, files with an ``ignored`` suffix (notes, metadata) too; any
    other file that is not data (``suffixes``) is an error, so that nothing is left out unnoticed.
    ``what`` names the data files in errors (e.g. "audio files"), ``setting`` the folder's config key.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} does not exist; set {setting} to a folder of {what} ({', '.join(suffixes)}) "
            "with one sub-folder per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() not in ignored)
        loose = [p for p in loose if not p.name.startswith(".")]
        if loose:
            raise ValueError(
                f"{root} holds both class sub-folders and loose {what} (e.g. {loose[0].name}); "
                "move every file into a class folder"
            )
    else:
        files = data_files(root.iterdir(), suffixes, ignored)
        if conditional:
            raise ValueError(
                f"no class sub-folders in {root}; put the {what} of each class in a sub-folder named after "
                "the class (or set conditional=false to use files directly in the folder)"
            )
        if not files:
            raise ValueError(f"no {what} in {root} (directly or in class sub-folders); formats: {', '.join(suffixes)}")
        return files, [0] * len(files), []
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        class_files = data_files(class_dir.rglob("*"), suffixes, ignored)
        if not class_files:
            raise ValueError(f"class folder '{class_dir.name}' in {root} has no {what}; add some or remove it")
        files += class_files
        labels += [label] * len(class_files)
    return files, labels, [d.name for d in class_dirs]


def keep_captioned(files: Sequence[Path], labels: Sequence[int], captions: dict[Path, str] | None):
    """The files (and their labels) that have a caption, in order, with the captions; all of them and
    no captions when ``captions`` is None (an uncaptioned folder)."""
    if captions is None:
        return list(files), list(labels), None
    kept = [(file, label) for file, label in zip(files, labels, strict=True) if file in captions]
    return [f for f, _ in kept], [label for _, label in kept], [captions[f] for f, _ in kept]


def data_files(paths, suffixes: Sequence[str], ignored: Sequence[str]) -> list[Path]:
    """The sorted non-hidden files of ``paths`` with a data suffix; ValueError for a file that is
    neither data nor ``ignored``."""
    files = sorted(p for p in paths if p.is_file() and not p.name.startswith("."))
    for path in files:
        if path.suffix.lower() not in (*suffixes, *ignored):
            raise ValueError(
                f"unsupported file format '{path.suffix or '(no extension)'}' for {path}; supported formats are "
                f"{', '.join(suffixes)} (convert it or move it out of the data folder)"
            )
    return [p for p in files if p.suffix.lower() in suffixes]


def check_class_names(root: Path, found: list[str] | None, expected: list[str] | None) -> None:
    """ValueError when the class folders found in ``root`` are not those a domain was built for
    (e.g. from a checkpoint)."""
    if list(found or []) != list(expected or []):
        raise ValueError(
            f"class folders of {root} are {found or '(none: unlabelled)'} but the domain was built for "
            f"{expected or '(none: unlabelled)'}; the class folders must match class_names (use the same folder "
            "layout as in training)"
        )


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def held_out_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` examples validate: the fraction rounded, but at least 1 and at most n-1
    when the fraction is positive and there are two or more."""
    count = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    return count


def split_indices(
    n: int,
    val_fraction: float,
    seed: int,
    labels: Tensor | None = None,
    permutation: Callable[[int], Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """A fixed random split of ``range(n)`` into sorted train and validation indices; with
    ``labels``, stratified (``held_out_count`` of every class, classes in sorted order).

    ``permutation(k)`` draws a permutation of ``range(k)``; by default ``torch.randperm`` with one
    generator seeded by ``seed``. A domain may pass its own so that earlier splits stay the same.
    """
    check_val_fraction(val_fraction)
    if permutation is None:
        generator = torch.Generator().manual_seed(seed)
        permutation = lambda k: torch.randperm(k, generator=generator)  # noqa: E731
    groups = [torch.arange(n)] if labels is None else [torch.nonzero(labels == v).flatten() for v in labels.unique()]
    train, val = [], []
    for members in groups:
        members = members[torch.as_tensor(permutation(len(members)), dtype=torch.long)]
        count = held_out_count(len(members), val_fraction)
        val.append(members[:count])
        train.append(members[count:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch travels with Lightning's checkpoints.

    Lightning saves ``state_dict()`` of a training loader in each checkpoint and hands it back to
    ``load_state_dict`` on resume. The state is the shuffling generator's state when the epoch's
    iterator was created and the number of batches served since, so a resumed run replays the
    same permutation and skips what was already trained on: the same batches in the same order as
    a run that was never stopped.
    """

    _epoch_start: Tensor | None = None
    _served = 0
    _resume: dict | None = None

    def __iter__(self):
        resume, self._resume = self._resume, None
        if resume is not None and self.generator is not None and resume["generator"] is not None:
            self.generator.set_state(resume["generator"])
        self._epoch_start = None if self.generator is None else self.generator.get_state()
        self._served = 0
        return self._serve(super().__iter__(), resume["batches"] if resume else 0)

    def _serve(self, iterator, skip: int):
        for batch in iterator:
            self._served += 1
            if self._served > skip:
                yield batch

    def state_dict(self) -> dict:
        if self._served >= len(self) or self._epoch_start is None:
            # The epoch is over (or has not begun): the next epoch starts from the generator as it is.
            current = None if self.generator is None else self.generator.get_state()
            return {"generator": current, "batches": 0}
        return {"generator": self._epoch_start, "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state


class TensorDictDataset(Dataset):
    """Rows of equally long tensors, served as dicts (the batch format of every domain)."""

    def __init__(self, tensors: dict[str, Tensor]):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors, self.length = tensors, lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class TensorDictDataModule(L.LightningDataModule):
    """Train and validation loaders over in-memory tensors; shuffling is seeded, so the order of
    training batches is the same on every run with the same seed."""

    def __init__(
        self,
        train: dict[str, Tensor],
        val: dict[str, Tensor],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.train_set, self.val_set = TensorDictDataset(train), TensorDictDataset(val)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader(self.val_set, shuffle=False) if len(self.val_set) else []
