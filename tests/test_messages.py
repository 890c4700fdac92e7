"""Messages a new user met cut off or pointing in a circle (issue 17): the wrong
architecture's message in whole clauses, `winclip download` offline not telling the user
to run `winclip download`."""

from __future__ import annotations

import pytest
import torch

import winclip_cli.backbone as backbone_module
from tests.test_backbone import FakeHub
from tests.test_backbone import no_hub as no_hub  # a fixture
from tests.test_backbone import state_dict as state_dict  # a fixture
from tests.tiny_model import TINY_NAME
from winclip_cli.architecture import mismatch_summary
from winclip_cli.errors import WeightsUnavailableError
from winclip_cli.model import WinClip


def test_a_wrong_architecture_message_is_whole(state_dict, tmp_path, no_hub):
    for key in list(state_dict):
        if key.startswith("visual.transformer.resblocks.1."):
            del state_dict[key]  # one layer fewer: a hundred lines from torch
    state_dict["visual.conv1.weight"] = torch.zeros(32, 3, 4, 4)
    path = tmp_path / "other.pt"
    torch.save(state_dict, path)
    with pytest.raises(WeightsUnavailableError) as info:
        WinClip.load(model=TINY_NAME, weights=path)
    message = str(info.value)
    assert message.endswith(")") and message.count("(") == message.count(")"), message
    assert "tensor(s) of another shape, e.g. visual.conv1.weight: [32, 3, 4, 4]" in message
    assert "missing, e.g. visual.transformer.resblocks.1." in message


def test_mismatch_summary_counts_every_kind():
    expected = {"a": (2, 2), "b": (3,), "c": (1,)}
    found = {"a": (2, 3), "b": (3,), "d": (4,)}
    assert mismatch_summary(expected, found) == (
        "1 tensor(s) of another shape, e.g. a: [2, 3] in the file, [2, 2] in the model; "
        "1 missing, e.g. c; 1 unexpected, e.g. d"
    )
    assert mismatch_summary({"a": (1,)}, {"a": (1,)}) == "the tensors do not match"


def test_download_offline_does_not_send_the_user_to_download(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub())
    monkeypatch.setattr(backbone_module, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(WeightsUnavailableError) as info:
        backbone_module.fetch_pretrained("ViT-B-16-plus-240", "laion400m_e31", downloading=True)
    message = str(info.value)
    assert "winclip download" not in message and "connected machine" in message
    assert "ViT-B-16-plus-240/laion400m_e31" in message
    with pytest.raises(WeightsUnavailableError, match="winclip download --model"):
        backbone_module.fetch_pretrained("ViT-B-16-plus-240", "laion400m_e31")  # a run's
