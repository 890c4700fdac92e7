"""Reference-bank files: the features of K normal images (WinCLIP+), saved and checked.

A bank is written to a temporary name and renamed, and checked on reading: a corrupt or
mismatched file is never trusted. A calibration file embeds the same payload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BankFileError
from .payloads import BANK_FORMAT, BANK_VERSION, BankFile, read_torch_file, write_torch_file
from .schemas import check


@dataclass
class ReferenceBank:
    """Features of K normal images: patch tokens and window embeddings, L2-normalised.

    ``patch_tokens``: (K * num_patches, width); ``windows[k]``: (K * num_windows_k, dim).
    ``meta`` records what the bank was built with, so a model it does not fit refuses it.
    """

    patch_tokens: torch.Tensor
    windows: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    # Set by WinClip.check_bank: which model checked it (a bank is validated once).
    checked_for: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_images(self) -> int:
        return int(self.meta.get("num_images", 0))

    def to(self, device: torch.device | str) -> ReferenceBank:
        return ReferenceBank(
            self.patch_tokens.to(device),
            {k: v.to(device) for k, v in self.windows.items()},
            dict(self.meta),
        )


def bank_payload(bank: ReferenceBank) -> dict[str, Any]:
    """The bank as plain tensors and strings (safe to torch.load): a bank file's content,
    and the bank inside a calibration file."""
    return {
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        "meta": bank.meta,
        "patch_tokens": bank.patch_tokens.detach().float().cpu(),
        "windows": {str(k): v.detach().float().cpu() for k, v in bank.windows.items()},
    }


def bank_from_payload(payload: Any, where: str) -> ReferenceBank:
    """The bank of a ``bank_payload``; BankFileError (naming ``where``) when it is not one."""
    if not isinstance(payload, dict) or payload.get("format") != BANK_FORMAT:
        raise BankFileError(f"{where} is not a winclip reference bank file")
    if payload.get("version") != BANK_VERSION:
        raise BankFileError(f"{where}: bank format version {payload.get('version')} unsupported")
    checked = check(BankFile, payload, where, BankFileError)
    windows = {int(k): v for k, v in checked.windows.items()}
    return ReferenceBank(checked.patch_tokens, windows, dict(payload["meta"]))


def save_bank(bank: ReferenceBank, path: str | os.PathLike[str]) -> None:
    """Write a bank file (a torch file of plain tensors and strings, safe to load)."""
    write_torch_file(path, bank_payload(bank))


def load_bank(path: str | os.PathLike[str]) -> ReferenceBank:
    """Read a bank file written by save_bank; raises BankFileError when it is not one."""
    path = Path(path)
    payload = read_torch_file(path, "reference bank file", BankFileError)
    return bank_from_payload(payload, str(path))
