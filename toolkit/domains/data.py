"""In-memory data sets shared by the domains: a fixed train/validation split and a
LightningDataModule over dicts of equally long tensors (the batch format of every domain)."""

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
        return DataLoader(
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
