"""WINCLIP.md's formulas on embeddings: p_anomalous, association, the zero-shot,
few-shot and WinCLIP+ maps and scores, and the grid-to-pixel upsampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .windows import harmonic_aggregate

# Below this every score is 0 or 1 anyway, and tau itself would underflow in fp32.
MIN_TEMPERATURE = 1e-6


def usable_temperature(value: float) -> bool:
    return MIN_TEMPERATURE <= value < math.inf  # False for NaN too


def check_temperature(value: float) -> None:
    """ValueError unless ``value`` is a temperature the scores can be computed with."""
    if not usable_temperature(value):
        raise ValueError(
            f"the temperature must be a positive number (at least {MIN_TEMPERATURE:g})"
        )


def p_anomalous(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos(f, T0) / tau, cos(f, T1) / tau)[1] for L2-normalised embeddings (..., D).

    Computed as sigmoid((cos1 - cos0) / tau), the same value: a softmax of two logits
    that overflow (a tiny tau) would give inf - inf = NaN."""
    cosines = embeddings.float() @ F.normalize(text.float(), dim=-1).T
    return torch.sigmoid((cosines[..., 1] - cosines[..., 0]) / temperature)


def association(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """min over bank of (1 - cos(q, b)) / 2, for L2-normalised queries (..., C) and bank (M, C)."""
    best = (queries.float() @ bank.float().T).amax(dim=-1)
    # Rounding can push a cosine a hair past 1; a negative distance would break 1/s.
    return ((1.0 - best) / 2.0).clamp_min(0.0)


def zero_shot_map(
    image_scores: torch.Tensor,
    window_scores: dict[int, torch.Tensor],
    windows: dict[int, torch.Tensor],
    num_cells: int,
) -> torch.Tensor:
    """M_zs = (1 + |scales|) / (1/s_img + sum_k 1/M_k), (B, num_cells)."""
    inverse = 1.0 / image_scores[:, None]
    for k, scores in window_scores.items():
        inverse = inverse + 1.0 / harmonic_aggregate(scores, windows[k], num_cells)
    return (1 + len(window_scores)) / inverse


def few_shot_map(
    patch_association: torch.Tensor,
    window_association: dict[int, torch.Tensor],
    windows: dict[int, torch.Tensor],
    num_cells: int,
) -> torch.Tensor:
    """M_fs = mean(A_p, A_k for each scale), the window maps harmonically aggregated."""
    total = patch_association
    for k, scores in window_association.items():
        total = total + harmonic_aggregate(scores, windows[k], num_cells)
    return total / (1 + len(window_association))


def winclip_plus(
    image_scores: torch.Tensor, zero_shot: torch.Tensor, few_shot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """WinCLIP+ (grid map, image score): ((M_zs + M_fs) / 2, (s_img + max M_fs) / 2)."""
    return (zero_shot + few_shot) / 2, (image_scores + few_shot.amax(dim=1)) / 2


def upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, gh, gw) maps to (B, H, W)."""
    return F.interpolate(
        grid_maps[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]
