"""Sliding windows on the patch grid and harmonic aggregation of window scores."""

from __future__ import annotations

import torch


def window_indices(grid_h: int, grid_w: int, k: int) -> torch.Tensor:
    """Patch indices of every k x k window at stride 1, shape (num_windows, k*k).

    Windows are ordered row-major by their top-left cell; patches inside a window are
    row-major too. Patch index = row * grid_w + col (the order of ViT patch tokens).
    """
    if not 1 <= k <= min(grid_h, grid_w):
        raise ValueError(f"window size {k} does not fit a {grid_h}x{grid_w} patch grid")
    rows = torch.arange(grid_h - k + 1)
    cols = torch.arange(grid_w - k + 1)
    offsets = (torch.arange(k)[:, None] * grid_w + torch.arange(k)[None, :]).reshape(-1)
    starts = (rows[:, None] * grid_w + cols[None, :]).reshape(-1)
    return starts[:, None] + offsets[None, :]


def harmonic_aggregate(
    window_scores: torch.Tensor, indices: torch.Tensor, num_cells: int
) -> torch.Tensor:
    """Per-cell harmonic mean of the scores of the windows covering it.

    window_scores: (B, num_windows); indices: (num_windows, k*k) from window_indices.
    Returns (B, num_cells): ``n_c / sum_{w covers c} 1 / s_w``; a zero score gives zero.
    A scatter-add rather than a product with a 0/1 coverage matrix, because 0 * inf
    (a zero score next to an uncovered cell) would turn into NaN.
    """
    indices = indices.to(window_scores.device)
    flat = indices.reshape(-1)
    inverse = window_scores.reciprocal().repeat_interleave(indices.shape[1], dim=1)
    inverse_sum = window_scores.new_zeros(window_scores.shape[0], num_cells)
    inverse_sum.index_add_(1, flat, inverse)
    counts = torch.bincount(flat, minlength=num_cells).to(window_scores)
    return counts / inverse_sum
