"""Mutual scoring (MuSc): WINCLIP.md "Mutual scoring", as pure tensor functions.

LNAMD turns a layer's patch tokens into unit vectors, MSM scores each patch by its
distance to the nearest patch of the other images, RsCIN smooths set scores over
similar images. MSM is one matrix product per block of images (never a loop over
patches): with unit vectors, ``||a - b||^2 = 2 - 2 a.b``, which the product gives
directly when ``a`` carries an extra 1 and ``b`` is stored as ``(-2 b, 2)``. Taking the
minimum of squared distances and the square root of the few kept keeps the order of
the Euclidean distances.

At bf16 the operands are the unit vectors rounded to bf16 (the product accumulates in
float32): a dot product errs by about 2^-9 / sqrt(C), so a squared distance by that much
absolutely, not relative to its own size. At the default model's width (C = 896) that
moves maps by 5e-4, as much as the bf16 forward pass itself moves them; carrying each
vector's rounding remainder too (three products in one) removed only a fifth of that
and cost 1.8x the MSM time (README, "Mutual scoring"). For a narrow model whose patches
are nearly identical (the tests' tiny one) the error is as large as the distances kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEGREES = (1, 3, 5)  # aggregation degrees r of LNAMD
RSCIN_KS = (1, 2, 3)  # RsCIN's neighbourhood sizes
LAYER_NORM_EPS = 1e-5
# Patch rows of one side of a block product: 2048 x 2048 squared distances (16 MB in
# float32) keep the working set small for any N; larger blocks did not run faster on
# the CPU (benchmarks/mutual.py).
BLOCK_ROWS = 2048
# The operands' width is padded to a multiple of this (matrix units work in tiles of 32).
WIDTH_MULTIPLE = 32

# (layer, r) -> the pool's right-hand operand (M, L, width), see distance_operands.
PoolOperands = Callable[[int, int], torch.Tensor]


def tapped_blocks(depth: int) -> tuple[int, ...]:
    """The 1-based blocks after which features are taken: d/4, d/2, 3d/4 and d, rounded
    up when d is not a multiple of 4 (a 2-block model taps 1, 1, 2, 2)."""
    if depth < 1:
        raise ValueError(f"a transformer needs at least one block, got {depth}")
    return tuple(max(1, -(-i * depth // 4)) for i in (1, 2, 3, 4))


def neighbour_count(others: int) -> int:
    """k of MSM: floor(0.3 * others), at least 1, in exact integer arithmetic."""
    return max(1, (3 * others) // 10)


# ----- LNAMD ---------------------------------------------------------------------------


def layer_norm_grid(tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, L, C) patch tokens -> (B, gh, gw, C), LayerNorm over each image's whole block of
    L x C values (no affine): the same numbers as over the (C, gh, gw) layout."""
    batch, length, width = tokens.shape
    gh, gw = grid_size
    if length != gh * gw:
        raise ValueError(f"{length} patch tokens do not fill a {gh}x{gw} grid")
    normed = F.layer_norm(tokens.float(), (length, width), eps=LAYER_NORM_EPS)
    return normed.view(batch, gh, gw, width)


def aggregate(normed: torch.Tensor, r: int) -> torch.Tensor:
    """(B, gh, gw, C) layer-normed grid -> (B, L, C) unit vectors: each patch the mean of
    its r x r neighbourhood, zero-padded at the borders (the divisor is always r*r).

    The r x r sum is r shifted rows, then r shifted columns, over whole channel vectors:
    2r additions per value where a 2-D pooling of each channel plane costs r*r."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation degree must be odd and positive, got {r}")
    batch, gh, gw, width = normed.shape
    if r > 1:
        half = r // 2
        padded = F.pad(normed, (0, 0, half, half, half, half))
        rows = padded[:, :gh].clone()
        for dy in range(1, r):  # in place: one buffer, not one new tensor per shift
            rows.add_(padded[:, dy : dy + gh])
        normed = rows[:, :, :gw].clone()
        for dx in range(1, r):
            normed.add_(rows[:, :, dx : dx + gw])
        normed.div_(r * r)
    return F.normalize(normed.reshape(batch, gh * gw, width), dim=-1)


def lnamd(tokens: torch.Tensor, grid_size: tuple[int, int], r: int) -> torch.Tensor:
    """LNAMD of one layer's (B, L, C) patch tokens at degree r: (B, L, C) unit vectors."""
    return aggregate(layer_norm_grid(tokens, grid_size), r)


# ----- MSM -----------------------------------------------------------------------------


def distance_operands(z: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right operands, (N, L, width) in ``dtype``, of unit vectors z (N, L, C):
    ``left[p] . right[q] = 2 - 2 z_p . z_q = ||z_p - z_q||^2``."""
    n, length, c = z.shape
    width = -(-(c + 1) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    left = z.new_zeros(n, length, width, dtype=dtype)
    right = z.new_zeros(n, length, width, dtype=dtype)
    left[..., :c] = z
    left[..., c] = 1.0
    right[..., :c] = z.to(dtype) * -2  # exact: a power of two times the rounded value
    right[..., c] = 2.0
    return left, right


def _block_squared(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(a, L, b, L') squared distances between the patches of two blocks of images."""
    a, length = left.shape[:2]
    b, length_b = right.shape[:2]
    product = left.flatten(0, 1) @ right.flatten(0, 1).T
    return product.view(a, length, b, length_b)


def _images_per_block(length: int) -> int:
    return max(1, BLOCK_ROWS // length)


def set_nearest_squared(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(N, L, N) float32: entry [i, p, j] is the smallest squared distance from patch p of
    image i to the patches of image j; the diagonal (j == i) is +inf.

    Each pair of image blocks is multiplied once: the minimum over the columns gives the
    first block's patches against the second's images, over the rows the reverse."""
    n, length = left.shape[:2]
    step = _images_per_block(length)
    nearest = torch.full((n, length, n), float("inf"), device=left.device)
    for a0 in range(0, n, step):
        a1 = min(n, a0 + step)
        for b0 in range(a0, n, step):
            b1 = min(n, b0 + step)
            squared = _block_squared(left[a0:a1], right[b0:b1])
            nearest[a0:a1, :, b0:b1] = squared.amin(dim=3).float()
            if b0 != a0:
                nearest[b0:b1, :, a0:a1] = squared.amin(dim=1).permute(1, 2, 0).float()
    diagonal = torch.arange(n, device=left.device)
    nearest[diagonal, :, diagonal] = float("inf")
    return nearest


def pool_nearest_squared(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(B, L, M) float32: smallest squared distance from each query patch (left: B
    images) to the patches of each pool image (right: M images)."""
    batch, length = left.shape[:2]
    m, pool_length = right.shape[:2]
    step = max(1, BLOCK_ROWS * BLOCK_ROWS // (batch * length * pool_length))
    nearest = torch.empty((batch, length, m), device=left.device)
    for m0 in range(0, m, step):
        m1 = min(m, m0 + step)
        nearest[:, :, m0:m1] = _block_squared(left, right[m0:m1]).amin(dim=3).float()
    return nearest


def mean_of_smallest(nearest_squared: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(N, L, M) squared distances -> (N, L): the mean of each patch's k[i] smallest
    distances (k per image; excluded images carry +inf and are never among them)."""
    if bool((k < 1).any()) or int(k.max()) > nearest_squared.shape[-1]:
        raise ValueError("every image needs at least one other image to be scored against")
    k_max = int(k.max())
    smallest = nearest_squared.topk(k_max, dim=-1, largest=False).values
    distances = smallest.clamp_min(0).sqrt()
    kept = torch.arange(k_max, device=k.device) < k[:, None]  # (N, k_max)
    summed = (distances * kept[:, None, :]).sum(dim=-1)
    return summed / k[:, None].to(summed.dtype)


def set_patch_scores(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MSM of one layer and degree over a set: (N, L, C) unit vectors -> (N, L)."""
    n = z.shape[0]
    if n < 2:
        raise ValueError("set mode needs at least 2 images: each is scored against the others")
    left, right = distance_operands(z, dtype)
    nearest = set_nearest_squared(left, right)
    k = torch.full((n,), neighbour_count(n - 1), device=z.device)
    return mean_of_smallest(nearest, k)


def pool_patch_scores(
    z: torch.Tensor, pool_right: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """MSM of one layer and degree against a pool: (B, L, C) unit vectors, the pool's
    right operand (M, L, width) and excluded (B, M) (a pool image that is the query
    itself) -> (B, L), with k = floor(0.3 * M') for the M' pool images left."""
    left, _ = distance_operands(z, pool_right.dtype)
    nearest = pool_nearest_squared(left, pool_right)
    nearest.masked_fill_(excluded[:, None, :], float("inf"))
    others = pool_right.shape[0] - excluded.sum(dim=1)
    if bool((others < 1).any()):
        raise ValueError("the pool holds no image other than the one scored")
    k = torch.tensor([neighbour_count(int(o)) for o in others], device=z.device)
    return mean_of_smallest(nearest, k)


def set_grid_maps(normed_layers: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Set mode's (N, gh, gw) grid maps from the tapped layers' layer-normed grids
    (each (N, gh, gw, C)): the mean of MSM over the layers and the degrees."""
    grid_size = tuple(normed_layers[0].shape[1:3])
    scores = [
        set_patch_scores(aggregate(normed, r), dtype) for normed in normed_layers for r in DEGREES
    ]
    return torch.stack(scores).mean(dim=0).view(-1, *grid_size)


def pool_grid_maps(
    normed_layers: Sequence[torch.Tensor], pool_operands: PoolOperands, excluded: torch.Tensor
) -> torch.Tensor:
    """Pool mode's (B, gh, gw) grid maps: as set_grid_maps, against a pool whose right
    operand of layer index i at degree r is ``pool_operands(i, r)``."""
    grid_size = tuple(normed_layers[0].shape[1:3])
    scores = [
        pool_patch_scores(aggregate(normed, r), pool_operands(index, r), excluded)
        for index, normed in enumerate(normed_layers)
        for r in DEGREES
    ]
    return torch.stack(scores).mean(dim=0).view(-1, *grid_size)


# ----- image scores --------------------------------------------------------------------


def map_maxima(grid_maps: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """(N, gh, gw) -> (N,): the maximum of each map upsampled bilinearly with
    align_corners=True to the model's input size (the image score before RsCIN)."""
    up = F.interpolate(
        grid_maps[:, None].float(), size=input_size, mode="bilinear", align_corners=True
    )
    return up.flatten(1).amax(dim=1)


def rscin(
    scores: torch.Tensor, embeddings: torch.Tensor, ks: Sequence[int] = RSCIN_KS
) -> torch.Tensor:
    """RsCIN of set scores (N,) with L2-normalised image embeddings (N, D).

    Scores are min-max normalised over the set (all equal: all 0); ``W = E E^T`` keeps the
    k largest entries of each row (k at most N), rows divided by their sums; the result
    is the mean over ks of ``W_k s``."""
    s = scores.float()
    span = s.max() - s.min()
    s = (s - s.min()) / span if bool(span > 0) else torch.zeros_like(s)
    similarity = embeddings.float() @ embeddings.float().T
    smoothed = []
    for k in ks:
        values, columns = similarity.topk(min(k, s.numel()), dim=1)
        kept = torch.zeros_like(similarity).scatter_(1, columns, values)
        smoothed.append((kept / kept.sum(dim=1, keepdim=True)) @ s)
    return torch.stack(smoothed).mean(dim=0)


def split_sets(count: int, most: int) -> list[range]:
    """Set mode's sets of ``count`` inputs in input order: as few as hold at most ``most``
    each, of sizes that differ by at most one (201 images in sets of 200 are 101 + 100,
    never 200 + a single image that has no other to be scored against)."""
    if most < 2:
        raise ValueError(f"a mutual-scoring set holds at least 2 images, got {most}")
    sets = max(1, -(-count // most))
    bounds = [i * count // sets for i in range(sets + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]
