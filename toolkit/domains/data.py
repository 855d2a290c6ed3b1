"""In-memory data sets shared by the domains: a fixed train/validation split, a LightningDataModule
over dicts of equally long tensors (the batch format of every domain) and the training loader
that resumes mid-epoch with the same batches."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random split of ``range(n)`` into sorted train and validation indices."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


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
