"""Distances between point clouds and the set-level metrics of point-cloud generation.

Shape distances (clouds of shape [N, 3]):

- Chamfer distance, as in PointFlow (Yang et al. 2019) and PVD (Zhou et al. 2021): the SUM of the
  two MEANS of SQUARED nearest-neighbour distances,
  ``CD(A, B) = mean_{a in A} min_{b in B} |a - b|^2 + mean_{b in B} min_{a in A} |a - b|^2``.
  Squared Euclidean distances, no square root; A and B may have different sizes.
- Earth mover's distance, exact: the optimal one-to-one matching of two clouds of equal size,
  ``EMD(A, B) = min over bijections phi of mean_{a in A} |a - phi(a)|`` (Euclidean, not squared),
  solved by the Hungarian algorithm (scipy's linear_sum_assignment), O(N^3) per pair: fine for a
  few hundred points, slow beyond. Published EMD numbers usually come from approximate matchings
  (PointFlow's approxmatch, PVD's auction), which are slightly above the exact value.

Set metrics compare generated shapes S_g with reference shapes S_r under one of these distances D
(PointFlow Sec. 5.1, as used by PVD):

- MMD (minimum matching distance): ``mean_{Y in S_r} min_{X in S_g} D(X, Y)``: how close every
  reference shape is to some generated one (fidelity; lower is better).
- COV (coverage): the fraction of reference shapes that are the nearest reference neighbour of at
  least one generated shape, ``|{argmin_{Y in S_r} D(X, Y) : X in S_g}| / |S_r|`` (diversity;
  higher is better).
- 1-NNA (1-nearest-neighbour accuracy): classify each shape of S_g union S_r by the set of its
  nearest neighbour among all other shapes of the union; the accuracy is 50% when the two sets are
  indistinguishable, 100% when they are apart; well below 50% means generated shapes copy
  reference shapes (each one's nearest neighbour is its twin in the other set). Returned as a
  fraction in [0, 1]; ties go to the generated set.

All numbers depend on how the shapes are normalised and on the number of points (papers often
quote MMD-CD x 10^3 at 2048 points); compare only numbers computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

DISTANCES = ("cd", "emd")


def _check_clouds(a: Tensor, b: Tensor) -> None:
    if a.ndim != 3 or b.ndim != 3 or a.shape[-1] != b.shape[-1] or a.shape[0] != b.shape[0]:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"expected two batches of clouds [B, N, D] and [B, M, D], got {shapes}")


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between all points of paired clouds [B, N, D], [B, M, D] -> [B, N, M],
    from coordinate differences (exactly 0 for equal points, unlike the |a|^2 + |b|^2 - 2ab expansion)."""
    _check_clouds(a, b)
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer distance of each pair of clouds [B, N, D], [B, M, D] -> [B]: the sum of the two means of
    squared nearest-neighbour distances (PointFlow/PVD convention; see the module docstring)."""
    d = squared_distances(a, b)
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def earth_movers_distance(a: Tensor, b: Tensor) -> Tensor:
    """Exact earth mover's distance of each pair of equal-size clouds [B, N, D] -> [B]: the mean
    Euclidean distance under the optimal one-to-one matching (Hungarian algorithm, O(N^3))."""
    _check_clouds(a, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"EMD needs clouds of equal size, got {a.shape[1]} and {b.shape[1]} points")
    costs = torch.cdist(a.double(), b.double()).cpu().numpy()
    values = []
    for cost in costs:
        rows, cols = linear_sum_assignment(cost)
        values.append(cost[rows, cols].mean())
    return torch.tensor(np.array(values), dtype=a.dtype, device=a.device)


def distance_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "cd":
        return chamfer_distance
    if name == "emd":
        return earth_movers_distance
    raise ValueError(f"unknown distance {name!r}; choose one of {DISTANCES}")


def pairwise_distances(x: Tensor, y: Tensor, distance: str = "cd", pairs_per_batch: int = 64) -> Tensor:
    """Matrix [n, m] of distances between every cloud of ``x`` [n, N, D] and every cloud of ``y`` [m, M, D],
    computed ``pairs_per_batch`` pairs at a time (memory grows with pairs_per_batch * N * M)."""
    fn = distance_fn(distance)
    if x.ndim != 3 or y.ndim != 3:
        raise ValueError(f"expected sets of clouds [n, N, D] and [m, M, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    rows = torch.arange(n).repeat_interleave(m)
    cols = torch.arange(m).repeat(n)
    out = torch.empty(n * m, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for start in range(0, n * m, pairs_per_batch):
            chunk = slice(start, start + pairs_per_batch)
            out[chunk] = fn(x[rows[chunk]], y[cols[chunk]])
    return out.reshape(n, m)


def minimum_matching_distance(gen_ref: Tensor) -> float:
    """MMD from the distance matrix [n_gen, n_ref]: mean over reference shapes of the distance to the
    closest generated shape."""
    return gen_ref.min(dim=0).values.mean().item()


def coverage(gen_ref: Tensor) -> float:
    """COV from the distance matrix [n_gen, n_ref]: fraction of reference shapes that are the nearest
    neighbour of some generated shape."""
    return gen_ref.argmin(dim=1).unique().numel() / gen_ref.shape[1]


def one_nearest_neighbour_accuracy(gen_gen: Tensor, gen_ref: Tensor, ref_ref: Tensor) -> float:
    """1-NNA from the three distance matrices: leave-one-out 1-NN classification accuracy of
    "generated vs reference" over the union of both sets (0.5 is ideal)."""
    n_gen, n_ref = gen_ref.shape
    full = torch.cat([torch.cat([gen_gen, gen_ref], dim=1), torch.cat([gen_ref.T, ref_ref], dim=1)], dim=0)
    full = full.clone()
    full.fill_diagonal_(float("inf"))
    is_generated = torch.cat([torch.ones(n_gen, dtype=torch.bool), torch.zeros(n_ref, dtype=torch.bool)])
    predicted = is_generated[full.argmin(dim=1).cpu()]
    return (predicted == is_generated).float().mean().item()


def set_metrics(
    generated: Tensor,
    reference: Tensor,
    distance: str = "cd",
    pairs_per_batch: int = 64,
    ref_ref: Tensor | None = None,
) -> dict[str, float]:
    """MMD, COV and 1-NNA of ``generated`` [n, N, D] against ``reference`` [m, M, D] under ``distance``.

    Keys are ``mmd-<distance>``, ``cov-<distance>``, ``1nna-<distance>``. ``ref_ref``, the reference
    set's own distance matrix, may be passed in to reuse it across several generated sets.
    """
    if generated.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("set metrics need at least 2 generated and 2 reference shapes")
    gen_ref = pairwise_distances(generated, reference, distance, pairs_per_batch)
    gen_gen = pairwise_distances(generated, generated, distance, pairs_per_batch)
    if ref_ref is None:
        ref_ref = pairwise_distances(reference, reference, distance, pairs_per_batch)
    return {
        f"mmd-{distance}": minimum_matching_distance(gen_ref),
        f"cov-{distance}": coverage(gen_ref),
        f"1nna-{distance}": one_nearest_neighbour_accuracy(gen_gen, gen_ref, ref_ref),
    }
