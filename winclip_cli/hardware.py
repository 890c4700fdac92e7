"""Which device runs the model, and the number format its vision tower computes in: the
names, what `auto` picks on this hardware and why, and the record that banks and
calibrations keep of it.

`auto` decides from the CPU features torch reports (cpuinfo), never from a start-up
benchmark: bf16 where the CPU has AMX (its bf16 matrix tiles run bf16 matmuls about 4x
faster than fp32), fp16 on CUDA, fp32 elsewhere. AVX512-BF16 without AMX is not enough:
its bf16 matmul measured slower than fp32 (benchmarks/precision.py). `int8` is opt-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Every precision a run can compute in; what files record (never "auto").
RESOLVED = ("fp32", "bf16", "fp16", "int8")
AUTO = "auto"
# Files written before the precision was recorded: the CLI's default then was fp32.
UNRECORDED = "fp32"

_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# cpuinfo's names of the features a benchmark reports, in the order they are listed.
REPORTED_FEATURES = (
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "avx512_f",
    "avx2",
    "fma3",
    "bf16",  # arm64
    "i8mm",  # arm64
    "sve",  # arm64
)


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its ``name`` (what files record) and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The float format matmuls run in; int8 quantises the linear layers' inputs and
        weights, and computes everything else in fp32."""
        return _FLOAT_DTYPES.get(self.name, torch.float32)

    @property
    def quantised(self) -> bool:
        return self.name == "int8"


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:N``) into a device that exists here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name} was asked for but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda or mps")
    return device


def cpu_features() -> dict[str, bool]:
    """The CPU's features as torch's cpuinfo reports them (name -> present)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:  # torch >= 2.8
        return {k: v for k, v in get().items() if isinstance(v, bool)}
    # Older torch: the probes it uses itself to pick its AMX kernels.
    probes = {
        "amx_bf16": "_is_amx_tile_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "avx512_vnni": "_is_vnni_supported",
        "avx512_f": "_is_avx512_supported",
        "avx2": "_is_avx2_supported",
    }
    found = {}
    for name, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        found[name] = bool(fn()) if fn is not None else False
    return found


def has_amx_bf16(features: Mapping[str, Any]) -> bool:
    """True when the CPU multiplies bf16 matrices natively (Intel AMX-BF16 tiles)."""
    return bool(features.get("amx_bf16"))


def describe_features(features: Mapping[str, Any]) -> str:
    """The features that decide each precision's speed, for benchmarks and logs."""
    present = [name.upper().replace("_", "-") for name in REPORTED_FEATURES if features.get(name)]
    return ", ".join(present) or "none of " + ", ".join(REPORTED_FEATURES)


def choose_auto(device: torch.device, features: Mapping[str, Any] | None = None) -> Precision:
    """What `--precision auto` computes in on ``device``, with the reason."""
    if device.type == "cuda":
        return Precision("fp16", "fp16: CUDA GPU")
    if device.type != "cpu":
        return Precision("fp32", f"fp32: {device.type} device")
    if has_amx_bf16(cpu_features() if features is None else features):
        return Precision("bf16", "bf16: CPU has AMX")
    return Precision("fp32", "fp32: CPU has no AMX (bf16 would be slower)")


def resolve(precision: str | Precision, device: torch.device) -> Precision:
    """The precision a run computes in; ValueError for a name or combination that can't
    run (fp16 on a CPU crawls; a GPU without bf16; int8 off the CPU). A Precision (one a
    file recorded, with its reason) is checked the same way and kept."""
    if isinstance(precision, Precision):
        resolve(precision.name, device)
        return precision
    if precision == AUTO:
        return choose_auto(device)
    if precision not in RESOLVED:
        raise ValueError(
            f"unknown precision {precision!r}: use auto, fp32, bf16, fp16 (GPU) or int8 (CPU)"
        )
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU: use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16: use --precision fp16 or fp32")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 runs on the CPU only: use --precision fp16 on a GPU")
    return Precision(precision, f"{precision}: asked for")


def recorded(meta: Mapping[str, Any]) -> str:
    """The precision a bank or calibration records; files from before it was recorded
    were made when the CLI's default was fp32, so they count as fp32."""
    value = meta.get("precision", UNRECORDED)
    return value if isinstance(value, str) else repr(value)


def mismatch(file_precision: str, run_precision: str, what: str) -> str | None:
    """The one-line refusal when a file made at one precision meets a run at another
    (scores move with the precision), naming the option that fixes it; None if they agree."""
    if file_precision == run_precision:
        return None
    return (
        f"{what} was made at precision {file_precision}, this run computes in "
        f"{run_precision}: give --precision {file_precision}, or make it again at "
        f"{run_precision}"
    )
