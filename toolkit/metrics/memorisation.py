"""Memorisation: does a generative model hand its training examples back?

Two measures of samples against the training set, in the domain's own space:

- **Copy share, by the ratio test.** A sample counts as a copy when its nearest training example is
  much closer than the second nearest: ``d(x, NN1) / d(x, NN2) < 1/3``. The test and the threshold
  1/3 come from the memorisation literature on diffusion models (Yoon et al. 2023, "Diffusion
  probabilistic models generalize when they fail to memorize"; Gu et al. 2023, "On memorization in
  diffusion models", arXiv:2310.02664), which use the L2 distance. A sample between several training
  examples passes; one sitting on a single example does not, whatever the scale of the data.
- **Nearest-training distances against held-out data.** Real data the model never saw is the
  reference for "as close as unseen data": ``nearest_ratio`` is the median nearest-training distance
  of the samples over that of held-out items (1 = as close as real unseen data, well below 1 =
  closer than real data gets), and ``close_share`` is the share of samples closer to the training
  set than the 5th percentile of the held-out items' nearest distances (about 0.05 for samples like
  unseen data). The ratio test applied to the held-out items gives ``held_out_copy_share``, the share
  the test reports for real data that cannot be a copy.

Distances: ``euclidean`` (the L2 norm of the flattened difference: pixels, spectrograms, time-series
windows, classifier features) and ``chamfer`` for point clouds [N, 3], which enters as the square
root of ``toolkit.metrics.pointcloud.chamfer_distance`` (a sum of mean squared distances) so that
it is a length like the L2 norm and the ratio test's 1/3 means the same thing.

Everything is computed in blocks of queries x training items, so 10,000 training items against
1,000 samples of any size fit in memory (``chunk_elements`` bounds one block). A Chamfer distance
costs N x M point pairs (30 ms for two 512-point clouds on a busy CPU core), so large clouds are
first compared on 128 random points each, and the exact distance is taken to the 20 nearest
candidates only (``coarse_points``, ``shortlist``). On 512-point ellipsoid surfaces this found the
exact two nearest of 100 training clouds for all of 30 fresh clouds (tests/test_memorisation.py
checks the shortlist at 256 points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from toolkit.metrics.pointcloud import chamfer_distance, pairwise_distances

RATIO_THRESHOLD = 1 / 3
CLOSE_QUANTILE = 0.05
DISTANCES = ("euclidean", "chamfer")
CHUNK_ELEMENTS = 2**24  # floats one block of differences may hold (64 MB in float32)
COARSE_POINTS = 128  # Chamfer: points per cloud for the first, shortlisting pass
SHORTLIST = 20  # Chamfer: candidates per sample measured exactly


def _block(queries: Tensor, items: Tensor, distance: str) -> Tensor:
    """Distances [q, t] between every query and every item, as lengths."""
    if distance == "euclidean":
        return torch.cdist(queries.flatten(1), items.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return pairwise_distances(queries, items, "cd", pairs_per_batch=64).clamp(min=0).sqrt()


def _check(queries: Tensor, items: Tensor, distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
    if len(items) < 2:
        raise ValueError(f"the ratio test needs at least 2 training items, got {len(items)}")
    if queries.shape[1:] != items.shape[1:] and distance == "euclidean":
        raise ValueError(
            f"samples {tuple(queries.shape[1:])} and training items {tuple(items.shape[1:])} differ in shape; "
            "compare them in the same space"
        )
    if distance == "chamfer" and (queries.ndim != 3 or items.ndim != 3 or queries.shape[-1] != items.shape[-1]):
        raise ValueError(
            f"chamfer needs point clouds [n, N, D] and [m, M, D], got {tuple(queries.shape)} and {tuple(items.shape)}"
        )


def _nearest_k(queries: Tensor, items: Tensor, distance: str, k: int, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Distances [n, k] to the k nearest items and their indices, block by block."""
    if distance == "euclidean":  # a block of differences [q, t, d] stays within chunk_elements
        size = max(1, queries[0].numel())
        item_block = max(k, min(len(items), chunk_elements // size))
        query_block = max(1, chunk_elements // (item_block * size))
    else:  # pairwise_distances bounds its own memory; here only the [q, t] pair lists
        item_block = len(items)
        query_block = max(1, chunk_elements // (64 * item_block))
    values, indices = [], []
    for q in queries.split(query_block):
        best = torch.full((len(q), k), float("inf"))
        best_index = torch.full((len(q), k), -1, dtype=torch.long)
        for start in range(0, len(items), item_block):
            block = _block(q, items[start : start + item_block], distance)
            offered = torch.arange(start, start + block.shape[1]).expand(len(q), -1)
            best, where = torch.cat([best, block], dim=1).topk(k, dim=1, largest=False)
            best_index = torch.cat([best_index, offered], dim=1).gather(1, where)
        values.append(best)
        indices.append(best_index)
    return torch.cat(values), torch.cat(indices)


def _subsample(clouds: Tensor, points: int, seed: int = 0) -> Tensor:
    """The same random ``points`` of every cloud (clouds are unordered sets)."""
    keep = torch.randperm(clouds.shape[1], generator=torch.Generator().manual_seed(seed))[:points]
    return clouds[:, keep]


def _paired_chamfer(queries: Tensor, items: Tensor, candidates: Tensor, pairs_per_batch: int = 64) -> Tensor:
    """sqrt of the Chamfer distance of query i to items[candidates[i, j]], [n, k]."""
    rows = torch.arange(len(queries)).repeat_interleave(candidates.shape[1])
    cols = candidates.flatten()
    out = torch.empty(len(rows))
    for start in range(0, len(rows), pairs_per_batch):
        pair = slice(start, start + pairs_per_batch)
        out[pair] = chamfer_distance(queries[rows[pair]], items[cols[pair]])
    return out.clamp(min=0).sqrt().reshape(candidates.shape)


@torch.no_grad()
def nearest_two(
    queries: Tensor,
    items: Tensor,
    distance: str = "euclidean",
    chunk_elements: int = CHUNK_ELEMENTS,
    coarse_points: int = COARSE_POINTS,
    shortlist: int = SHORTLIST,
) -> tuple[Tensor, Tensor]:
    """Distances [n, 2] from each query to its nearest and second-nearest item, and their indices
    [n, 2], computed block by block (a block holds about ``chunk_elements`` floats).

    Chamfer distances cost N x M per pair, so for clouds of more than ``coarse_points`` points the
    ``shortlist`` nearest items are first found with ``coarse_points`` random points of every cloud,
    and the exact distance is taken to those only (the exact top two of the shortlist).
    """
    _check(queries, items, distance)
    queries, items = queries.float(), items.float()
    large = max(queries.shape[1], items.shape[1]) > coarse_points if distance == "chamfer" else False
    if not large or len(items) <= shortlist:
        return _nearest_k(queries, items, distance, 2, chunk_elements)
    coarse = _nearest_k(
        _subsample(queries, coarse_points), _subsample(items, coarse_points), distance, shortlist, chunk_elements
    )
    candidates = coarse[1]
    exact = _paired_chamfer(queries, items, candidates)
    values, where = exact.topk(2, dim=1, largest=False)
    return values, candidates.gather(1, where)


def ratio_copies(nearest: Tensor, threshold: float = RATIO_THRESHOLD) -> Tensor:
    """Boolean [n]: nearest / second-nearest distance below ``threshold`` (an item with two identical
    nearest items at distance 0 counts as a copy)."""
    first, second = nearest[:, 0], nearest[:, 1]
    ratio = torch.where(second > 0, first / second.clamp(min=torch.finfo(second.dtype).tiny), 0.0)
    return ratio < threshold


def _median(values: Tensor) -> float:
    return torch.quantile(values.double(), 0.5).item()


@dataclass
class Memorisation:
    """The measures of one set of samples (see the module docstring); held-out fields are None when
    there is no held-out data."""

    distance: str
    threshold: float
    n_samples: int
    n_train: int
    copy_share: float
    median_nearest: float
    n_held_out: int = 0
    held_out_copy_share: float | None = None
    held_out_median_nearest: float | None = None
    nearest_ratio: float | None = None
    close_share: float | None = None
    close_quantile: float = CLOSE_QUANTILE

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and result files."""
        line = (
            f"copy share {100 * self.copy_share:.1f}% of {self.n_samples} samples (nearest / second-nearest "
            f"training {self.distance} distance < {self.threshold:.3g}; {self.n_train} training items)"
        )
        if self.nearest_ratio is None:
            return line + "; no held-out data to compare with"
        return line + (
            f"; median nearest-training distance {self.nearest_ratio:.2f}x held-out data's "
            f"(held-out copy share {100 * self.held_out_copy_share:.1f}%); "
            f"{100 * self.close_share:.1f}% of samples closer than {100 * self.close_quantile:.0f}% of held-out items"
        )


class NearestTraining:
    """The training set and the held-out reference, prepared once to score many sample sets.

    ``train`` [m, ...] and ``held_out`` [k, ...] (or None) are tensors in the space the distance is
    taken in: flat or shaped vectors for ``euclidean``, clouds [n, N, 3] for ``chamfer``.
    """

    def __init__(
        self,
        train: Tensor,
        held_out: Tensor | None = None,
        distance: str = "euclidean",
        chunk_elements: int = CHUNK_ELEMENTS,
    ):
        self.train, self.distance, self.chunk_elements = torch.as_tensor(train), distance, chunk_elements
        self.held_out_nearest = None
        if held_out is not None and len(held_out):
            self.held_out_nearest = nearest_two(torch.as_tensor(held_out), self.train, distance, chunk_elements)[0]

    def held_out_copy_share(self, threshold: float = RATIO_THRESHOLD) -> float | None:
        """The share of held-out items the ratio test calls copies (None without held-out data)."""
        if self.held_out_nearest is None:
            return None
        return ratio_copies(self.held_out_nearest, threshold).float().mean().item()

    def score(self, samples: Tensor, threshold: float = RATIO_THRESHOLD) -> Memorisation:
        """The memorisation measures of ``samples`` [n, ...] against the training set."""
        if not 0 < threshold <= 1:
            raise ValueError(f"the ratio-test threshold must be in (0, 1], got {threshold}")
        if len(samples) < 1:
            raise ValueError("no samples to score; pass at least one")
        nearest = nearest_two(torch.as_tensor(samples), self.train, self.distance, self.chunk_elements)[0]
        result = Memorisation(
            distance=self.distance,
            threshold=threshold,
            n_samples=len(nearest),
            n_train=len(self.train),
            copy_share=ratio_copies(nearest, threshold).float().mean().item(),
            median_nearest=_median(nearest[:, 0]),
        )
        reference = self.held_out_nearest
        if reference is not None:
            held_out_median = _median(reference[:, 0])
            close = torch.quantile(reference[:, 0].double(), CLOSE_QUANTILE).item()
            result.n_held_out = len(reference)
            result.held_out_copy_share = self.held_out_copy_share(threshold)
            result.held_out_median_nearest = held_out_median
            result.nearest_ratio = result.median_nearest / held_out_median if held_out_median > 0 else float("inf")
            result.close_share = (nearest[:, 0].double() < close).float().mean().item()
        return result


def memorisation(
    samples: Tensor,
    train: Tensor,
    held_out: Tensor | None = None,
    distance: str = "euclidean",
    threshold: float = RATIO_THRESHOLD,
) -> Memorisation:
    """The memorisation measures of ``samples`` against ``train``, with ``held_out`` as the reference
    (see the module docstring)."""
    return NearestTraining(train, held_out, distance).score(samples, threshold)
