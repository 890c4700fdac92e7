"""open_clip backbone: weights resolution, cheap construction, device and precision
(chosen by hardware.py).

The model is built on the ``meta`` device (no random initialisation, which would cost
seconds for the default model only to be overwritten) and its weights are then
assigned straight from the checkpoint, memory-mapped where the format allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .architecture import architecture_hint, checkpoint_architecture, mismatch_summary
from .errors import WeightsUnavailableError, exception_reason
from .hardware import Precision, resolve, resolve_device
from .options import DEFAULT_MODEL, DEFAULT_PRETRAINED, LOCAL_DIR

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class Backbone:
    """A loaded open_clip model with what the rest of the program needs to know about it."""

    # open_clip's CLIP: its towers are plain attributes that open_clip does not type.
    clip: Any
    model_name: str
    weights_id: str  # content fingerprint of the weights: cache keys, bank compatibility
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    precision: Precision  # what the vision tower computes in (resolved, never auto), and why
    source: str = ""  # where the weights came from (a file, a tag in the cache), for logs
    checkpoint: str = ""  # the weights file read (absolute): calibrations and banks record it
    pretrained: str | None = None  # the open_clip tag, when the weights are one

    @property
    def dtype(self) -> torch.dtype:
        """The float format of the vision tower's matmuls (float32 for fp32 and int8)."""
        return self.precision.dtype


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs warnings on the root logger (e.g. 'initialized randomly'); hide them."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline: the hub client retries for about a minute before giving up."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # The name lookup ignores the socket timeout and can hang on a broken resolver.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _offline_help(model: str, pretrained: str, downloading: bool = False) -> str:
    if downloading:  # `winclip download` itself: telling it to run itself helps no one
        return (
            f"cannot download weights {model}/{pretrained}: the model hub cannot be reached "
            "from this machine. Run this command on a connected machine and copy its cache "
            "folder (the path it prints) here, or give the scoring commands a local "
            "checkpoint with --weights FILE"
        )
    return (
        f"weights {model}/{pretrained} are not in the local cache and the model hub cannot "
        f"be reached. Run `winclip download --model {model} --pretrained {pretrained}` on a "
        "connected machine (then copy the cache), or pass a local checkpoint with "
        "--weights FILE"
    )


def hub_file(model: str, pretrained: str) -> tuple[str, str]:
    """The (repo_id, filename) on the hub for an open_clip pretrained tag."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model) or "none"
        raise WeightsUnavailableError(
            f"unknown weights tag {pretrained!r} for model {model!r} (known tags: {tags}); "
            "or pass a local checkpoint with --weights FILE"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise WeightsUnavailableError(
            f"weights {model}/{pretrained} are not on the model hub; download them yourself "
            "and pass --weights FILE"
        )
    # open_clip's convention: 'org/repo/file', or 'org/repo/' for its default file name.
    repo_id, filename = os.path.split(hub)
    return repo_id, filename or "open_clip_pytorch_model.bin"


def fetch_pretrained(
    model: str,
    pretrained: str,
    cache_dir: str | None = None,
    allow_download: bool = True,
    downloading: bool = False,
) -> Path:
    """Path of the checkpoint for an open_clip tag: from the local cache, else downloaded.

    Raises WeightsUnavailableError within seconds when offline and not cached
    (``downloading``: the message is for `winclip download` itself).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, filename = hub_file(model, pretrained)
    # open_clip prefers a safetensors twin of the .bin when the repo has one.
    candidates = [filename]
    if filename.endswith(".bin"):
        candidates.insert(0, "open_clip_model.safetensors")
    for name in candidates:
        try:
            path = hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True)
            return Path(path)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            continue
    if not allow_download or not _hub_reachable():
        raise WeightsUnavailableError(_offline_help(model, pretrained, downloading))
    errors = []
    for name in candidates:
        try:
            return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir))
        except Exception as exc:  # the hub raises many types; keep the last reason
            errors.append(f"{name}: {exception_reason(exc)}")
    raise WeightsUnavailableError(
        f"could not download weights {model}/{pretrained} ({errors[-1]}); "
        "pass a local checkpoint with --weights FILE"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors / .pt / .bin, bare or under a ``state_dict`` key."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path))
        else:
            try:  # mmap: pages are read as the weights are used, not all up front
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be mapped
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read weights file {path}: {exception_reason(exc, 200)} "
            "(is it an open_clip checkpoint?)"
        ) from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise WeightsUnavailableError(f"weights file {path} does not hold a state dict")
    if next(iter(checkpoint)).startswith("module."):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint


def _local_dir_checkpoint(folder: Path) -> Path | None:
    for name in (
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.safetensors",
        "open_clip_pytorch_model.bin",
        "open_clip_pytorch_model.pth",
        "model.safetensors",
        "pytorch_model.bin",
        "model.pt",
        "model.pth",
    ):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return found[0] if found else None


def weights_fingerprint(clip: torch.nn.Module) -> str:
    """Content identity of loaded weights, independent of file name, format or location.

    Hashes every tensor's name, shape and its first and last 64 values: any fine-tuning
    changes those, while hashing all 0.8 GB would cost seconds and page in the text tower,
    which a warm text cache never needs.
    """
    digest = hashlib.sha256()
    for name, tensor in clip.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode() + sample)
    return digest.hexdigest()[:24]


def _build_on_meta(model: str) -> Any:  # open_clip's CLIP (see Backbone.clip)
    import open_clip

    with _quiet_open_clip(), torch.device("meta"):
        try:
            return open_clip.create_model(model, load_weights=False, device="meta")
        except (RuntimeError, FileNotFoundError, ValueError) as exc:
            raise WeightsUnavailableError(f"cannot build model {model!r}: {exc}") from exc


def _assign_weights(
    clip: Any, state: dict[str, torch.Tensor], source: str, model: str = "this model"
) -> None:
    from open_clip.model import resize_pos_embed

    arch = checkpoint_architecture(state)  # before resize_pos_embed adapts the grid
    if "logit_scale" in state and state["logit_scale"].ndim != clip.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    resize_pos_embed(state, clip)
    expected = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    try:
        clip.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        hint = architecture_hint(state, arch)
        detail = mismatch_summary(expected, {k: tuple(v.shape) for k, v in state.items()})
        raise WeightsUnavailableError(
            f"weights {source} do not fit --model {model}: {hint} ({detail})"
        ) from exc
    # Non-persistent buffers are not in a checkpoint: rebuild them on a real device.
    for name, buf in list(clip.named_buffers()):
        if buf.is_meta:
            if not name.endswith("attn_mask") or buf.ndim != 2 or buf.shape[0] != buf.shape[1]:
                raise WeightsUnavailableError(f"model has an unsupported buffer {name!r}")
            mask = torch.full(tuple(buf.shape), float("-inf")).triu_(1)
            owner = clip.get_submodule(name.rpartition(".")[0]) if "." in name else clip
            owner.register_buffer(name.rpartition(".")[2], mask, persistent=False)


_NO_CLASS_TOKEN = "model {model!r} is not a ViT with a class token: WinCLIP needs one"


def _check_class_token_config(model: str, config: dict[str, Any]) -> None:
    """The same check as on the built model, from the config alone: so that a ResNet or
    an attention-pooled ViT is refused before its weights are downloaded."""
    vision = config.get("vision_cfg", {})
    resnet = isinstance(vision.get("layers"), (list, tuple))
    pooled = vision.get("pool_type", "tok") != "tok" or vision.get("attentional_pool")
    if resnet or vision.get("timm_model_name") or pooled:
        raise WeightsUnavailableError(_NO_CLASS_TOKEN.format(model=model))


def load_backbone(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str | Precision = "fp32",
    cache_dir: str | None = None,
) -> Backbone:
    """Build the open_clip model and load its weights.

    ``weights`` (a local file) wins over ``pretrained`` (an open_clip tag, downloaded once
    and cached); with ``model="local-dir:PATH"`` both come from that folder. Nothing is
    downloaded when ``weights`` is given. Raises WeightsUnavailableError on any failure.
    """
    torch_device = resolve_device(device)
    chosen = resolve(precision, torch_device)
    import open_clip

    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR) :])
        config_path = folder / "open_clip_config.json"
        if not config_path.is_file():
            raise WeightsUnavailableError(f"{model}: no open_clip_config.json in {folder}")
        try:
            preprocess_cfg = json.loads(config_path.read_text()).get("preprocess_cfg", {})
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise WeightsUnavailableError(f"{model}: unreadable open_clip_config.json") from exc
        checkpoint = Path(weights) if weights else _local_dir_checkpoint(folder)
        if checkpoint is None:
            raise WeightsUnavailableError(f"{model}: no weights file in {folder}")
        tag_cfg: dict[str, Any] = preprocess_cfg
    else:
        if open_clip.get_model_config(model) is None:
            raise WeightsUnavailableError(
                f"unknown model {model!r}: use a name from open_clip.list_models() "
                "or local-dir:PATH"
            )
        _check_class_token_config(model, open_clip.get_model_config(model))
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
        if weights:
            checkpoint = Path(weights)
        elif pretrained:
            checkpoint = fetch_pretrained(model, pretrained, cache_dir=cache_dir)
        else:
            raise WeightsUnavailableError("no weights: give a pretrained tag or --weights FILE")

    clip = _build_on_meta(model)
    visual = clip.visual
    if getattr(visual, "pool_type", None) != "tok" or getattr(visual, "attn_pool", None):
        raise WeightsUnavailableError(_NO_CLASS_TOKEN.format(model=model))
    _assign_weights(clip, _read_state_dict(checkpoint), str(checkpoint), model)
    weights_id = weights_fingerprint(clip)  # on the CPU copy: no device round trips
    clip = clip.to(torch_device).eval().requires_grad_(False)

    default = visual.preprocess_cfg
    mean: tuple[float, float, float] = tuple(tag_cfg.get("mean", default["mean"]))
    std: tuple[float, float, float] = tuple(tag_cfg.get("std", default["std"]))
    source = (
        str(checkpoint)
        if weights or model.startswith(LOCAL_DIR)
        else (f"{pretrained} from {checkpoint}")
    )
    tag = None if model.startswith(LOCAL_DIR) else pretrained
    where = os.path.abspath(checkpoint)
    return Backbone(clip, model, weights_id, mean, std, torch_device, chosen, source, where, tag)
