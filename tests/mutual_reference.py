"""Slow, obvious mutual scoring (WINCLIP.md "Mutual scoring"), for the tests to match.

Loops over images, patches and cells, straight from the text, in float64, with the
features taken from open_clip's own blocks (not winclip's encoder)."""

from __future__ import annotations

import math

import torch


def reference_layers(wc, x: torch.Tensor, blocks: tuple[int, ...]):
    """(embeddings (N, D), {block: (N, L, C) patch tokens}) through open_clip's own modules."""
    v = wc.visual
    with torch.no_grad():
        tokens = v._embeds(x)
        taps = {}
        for number, block in enumerate(v.transformer.resblocks, start=1):
            tokens = block(tokens)
            taps[number] = tokens[:, 1:].double()
        pooled, _ = v._pool(tokens)
        embedding = pooled @ v.proj
    embedding = embedding.double()
    embedding = embedding / embedding.norm(dim=1, keepdim=True)
    return embedding, {b: taps[b] for b in blocks}


def layer_norm(block: torch.Tensor) -> torch.Tensor:
    """LayerNorm over a whole (C, gh, gw) block, no affine, eps 1e-5."""
    mean = block.mean()
    variance = ((block - mean) ** 2).mean()
    return (block - mean) / math.sqrt(variance + 1e-5)


def aggregate(grid: torch.Tensor, r: int) -> list[torch.Tensor]:
    """Each cell (row-major) the mean of its r x r neighbourhood (zeros outside the grid,
    divisor r*r), then L2-normalised."""
    _, gh, gw = grid.shape
    half = r // 2
    out = []
    for y in range(gh):
        for x in range(gw):
            total = torch.zeros(grid.shape[0], dtype=grid.dtype)
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    if 0 <= y + dy < gh and 0 <= x + dx < gw:
                        total = total + grid[:, y + dy, x + dx]
            mean = total / (r * r)
            out.append(mean / mean.norm())
    return out


def lnamd(tokens: torch.Tensor, grid_size: tuple[int, int], r: int) -> list[torch.Tensor]:
    """Per image, its (L, C) patch vectors after LNAMD at degree r."""
    gh, gw = grid_size
    images = []
    for image in tokens.double():
        grid = image.T.reshape(image.shape[1], gh, gw)
        images.append(torch.stack(aggregate(layer_norm(grid), r)))
    return images


def k_of(others: int) -> int:
    return max(1, math.floor(0.3 * others))


def patch_score(patch: torch.Tensor, others: list[torch.Tensor]) -> float:
    """Mean of the k smallest nearest-patch distances to the other images."""
    nearest = []
    for image in others:  # image: (L, C), every patch of one other image
        nearest.append(float((image - patch).norm(dim=1).min()))
    nearest.sort()
    k = k_of(len(others))
    return sum(nearest[:k]) / k


def msm_set(z: list[torch.Tensor]) -> torch.Tensor:
    """(N, L) patch scores of every image against the others of the set."""
    rows = []
    for i, image in enumerate(z):
        others = [other for j, other in enumerate(z) if j != i]
        rows.append([patch_score(p, others) for p in image])
    return torch.tensor(rows, dtype=torch.float64)


def msm_pool(z: list[torch.Tensor], pool: list[torch.Tensor], skip: list[set[int]]):
    """(B, L) patch scores of each query against the pool minus its ``skip`` members."""
    rows = []
    for i, image in enumerate(z):
        others = [member for j, member in enumerate(pool) if j not in skip[i]]
        rows.append([patch_score(p, others) for p in image])
    return torch.tensor(rows, dtype=torch.float64)


def upsampled_max(grid: torch.Tensor, size: tuple[int, int]) -> float:
    """Max of the map upsampled bilinearly with align_corners=True (corners on corners)."""
    gh, gw = grid.shape
    height, width = size
    cells = grid.tolist()
    best = -math.inf
    for py in range(height):
        sy = py * (gh - 1) / (height - 1) if height > 1 else 0.0
        y0 = min(math.floor(sy), gh - 1)
        y1, fy = min(y0 + 1, gh - 1), sy - y0
        for px in range(width):
            sx = px * (gw - 1) / (width - 1) if width > 1 else 0.0
            x0 = min(math.floor(sx), gw - 1)
            x1, fx = min(x0 + 1, gw - 1), sx - x0
            top = cells[y0][x0] * (1 - fx) + cells[y0][x1] * fx
            bottom = cells[y1][x0] * (1 - fx) + cells[y1][x1] * fx
            best = max(best, top * (1 - fy) + bottom * fy)
    return best


def rscin(scores: list[float], embeddings: torch.Tensor, ks=(1, 2, 3)) -> list[float]:
    """Min-max normalise; per k keep each row's k largest similarities, normalise rows,
    smooth; mean over ks."""
    n = len(scores)
    low, high = min(scores), max(scores)
    s = [(v - low) / (high - low) for v in scores]
    w = [[float(embeddings[i] @ embeddings[j]) for j in range(n)] for i in range(n)]
    result = [0.0] * n
    for k in ks:
        for i in range(n):
            keep = sorted(range(n), key=lambda j: w[i][j], reverse=True)[: min(k, n)]
            total = sum(w[i][j] for j in keep)
            result[i] += sum(w[i][j] * s[j] for j in keep) / total / len(ks)
    return result


def grid_maps(per_layer_and_degree: list[torch.Tensor], grid_size) -> torch.Tensor:
    """The mean over layers and degrees, as (N, gh, gw)."""
    return torch.stack(per_layer_and_degree).mean(dim=0).view(-1, *grid_size)
