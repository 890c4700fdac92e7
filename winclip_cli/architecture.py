"""What a checkpoint's tensors say about the model it was made for: its vision tower's
shape, the open_clip names that fit, and how it differs from a model it does not fit.
Used for the messages of weights that do not fit --model."""

from __future__ import annotations

import functools

import torch

__all__ = ["architecture_hint", "checkpoint_architecture", "mismatch_summary"]


def checkpoint_architecture(state: dict[str, torch.Tensor]) -> dict[str, int] | None:
    """The vision tower a state dict was made for, read from its tensor shapes: width and
    patch size (conv1), input size (positional embedding), layers (resblocks); None when
    it is not an open_clip ViT."""
    conv = state.get("visual.conv1.weight")
    pos = state.get("visual.positional_embedding")
    if conv is None or pos is None or conv.ndim != 4 or pos.ndim != 2:
        return None
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((pos.shape[0] - 1) ** 0.5)
    prefix = "visual.transformer.resblocks."
    layers = {key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}
    return {"width": width, "layers": len(layers), "patch_size": patch, "image_size": grid * patch}


@functools.cache
def _vision_table(names: tuple[str, ...]) -> dict[str, tuple[int, int, int, int]]:
    """(width, layers, patch size, input size) of every open_clip ViT config; keyed by the
    list of names, so configs added later (add_model_config) are seen."""
    import open_clip

    table = {}
    for name in names:
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        size = vision.get("image_size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        values = (vision.get("width"), vision.get("layers"), vision.get("patch_size"), size)
        if all(isinstance(v, int) for v in values):
            table[name] = values
    return table


def architecture_hint(state: dict[str, torch.Tensor], arch: dict[str, int] | None = None) -> str:
    """One clause naming what a checkpoint looks like, and the open_clip names that fit
    (``arch``: its checkpoint_architecture, when read before the state was adapted)."""
    import open_clip

    arch = arch or checkpoint_architecture(state)
    if arch is None:
        return "they are not an open_clip ViT checkpoint"
    shape = (arch["width"], arch["layers"], arch["patch_size"], arch["image_size"])
    names = [n for n, v in _vision_table(tuple(open_clip.list_models())).items() if v == shape]
    looks = (
        f"they look like a ViT of width {shape[0]}, {shape[1]} layers, patch {shape[2]}, "
        f"input {shape[3]}"
    )
    if not names:
        return looks + " (no open_clip model has that shape: try --model local-dir:PATH)"
    return looks + f": try --model {' or '.join(names[:6])}"


def mismatch_summary(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> str:
    """How a checkpoint's tensors differ from the model's, in whole words: counts of
    tensors of another shape, missing and unexpected ones, with one example (torch's own
    message runs to thousands of characters, and cut short it stops mid-sentence)."""
    reshaped = [k for k in found if k in expected and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensor(s) of another shape, e.g. {k}: {list(found[k])} in the "
            f"file, {list(expected[k])} in the model"
        )
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    return "; ".join(parts) or "the tensors do not match"
