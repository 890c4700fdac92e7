"""The compositional prompt ensemble (WINCLIP.md) and prompt files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_runner
from winclip_cli.prompts import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    PromptFileError,
    PromptSet,
    clean_class_name,
    load_prompt_file,
)

# Copied from WINCLIP.md, independently of the engine's lists.
SPEC_NORMAL = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
]
SPEC_ANOMALOUS = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
SPEC_TEMPLATES = [
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
]


def test_state_and_template_lists_are_the_papers():
    assert list(NORMAL_STATES) == SPEC_NORMAL
    assert list(ANOMALOUS_STATES) == SPEC_ANOMALOUS
    assert list(TEMPLATES) == SPEC_TEMPLATES
    assert len(TEMPLATES) == 22
    assert len(set(TEMPLATES)) == 22
    for s in (*NORMAL_STATES, *ANOMALOUS_STATES, *TEMPLATES):
        assert s.count("{}") == 1


def test_default_prompts_exact_strings():
    normal, anomalous = PromptSet().prompts("object")
    assert len(normal) == 154
    assert len(anomalous) == 88
    assert len(set(normal)) == 154
    assert len(set(anomalous)) == 88
    assert not set(normal) & set(anomalous)
    assert normal[0] == "a cropped photo of the object."
    assert normal[-1] == "a photo of the object without damage for anomaly detection."
    assert anomalous[0] == "a cropped photo of the damaged object."
    assert anomalous[-1] == "a photo of the object with damage for anomaly detection."
    # every state in every template, nothing else
    assert set(normal) == {
        t.replace("{}", s.replace("{}", "object")) for s in SPEC_NORMAL for t in SPEC_TEMPLATES
    }
    assert set(anomalous) == {
        t.replace("{}", s.replace("{}", "object")) for s in SPEC_ANOMALOUS for t in SPEC_TEMPLATES
    }
    assert "a photo of a flawless object for visual inspection." in normal
    assert "a blurry photo of a object with flaw." in anomalous
    assert all("{}" not in p for p in normal + anomalous)


def test_underscores_become_spaces():
    normal, anomalous = PromptSet().prompts("metal_nut")
    assert normal[0] == "a cropped photo of the metal nut."
    assert anomalous[-1] == "a photo of the metal nut with damage for anomaly detection."
    assert all("_" not in p for p in normal + anomalous)
    assert clean_class_name("metal_nut") == "metal nut"
    assert clean_class_name("pcb1") == "pcb1"
    assert clean_class_name("Screw") == "Screw"
    assert clean_class_name("pipe_fryum") == "pipe fryum"
    assert clean_class_name("  toothbrush ") == "toothbrush"


@pytest.mark.parametrize("name", ["", "   ", "_", "__", "\t"])
def test_empty_class_name_is_refused(name):
    with pytest.raises(ValueError, match="class"):
        clean_class_name(name)
    with pytest.raises(ValueError):
        PromptSet().prompts(name)


def test_custom_prompt_set():
    ps = PromptSet(normal=("good {}",), anomalous=("bad {}", "{} broken"), templates=("{}!",))
    normal, anomalous = ps.prompts("wood_plank")
    assert normal == ["good wood plank!"]
    assert anomalous == ["bad wood plank!", "wood plank broken!"]


def write_json(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_prompt_file_with_all_keys(tmp_path):
    path = write_json(
        tmp_path / "p.json",
        {
            "normal": ["intact {}", "{} in good shape"],
            "anomalous": ["cracked {}"],
            "templates": ["a photo of a {}.", "{}"],
        },
    )
    ps = load_prompt_file(path)
    assert isinstance(ps, PromptSet)
    normal, anomalous = ps.prompts("bottle")
    assert normal == [
        "a photo of a intact bottle.",
        "intact bottle",
        "a photo of a bottle in good shape.",
        "bottle in good shape",
    ]
    assert anomalous == ["a photo of a cracked bottle.", "cracked bottle"]


def test_prompt_file_with_a_byte_order_mark(tmp_path):
    """Windows editors save UTF-8 with a BOM; the file is the same prompts."""
    path = tmp_path / "p.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"normal": ["intact {}"], "anomalous": ["bent {}"]}')
    normal, anomalous = load_prompt_file(path).prompts("pin")
    assert "a photo of a intact pin." in normal and "a photo of a bent pin." in anomalous


def test_prompt_file_missing_keys_keep_the_papers_lists(tmp_path):
    ps = load_prompt_file(write_json(tmp_path / "p.json", {"anomalous": ["scratched {}"]}))
    assert ps.normal == tuple(SPEC_NORMAL)
    assert ps.templates == tuple(SPEC_TEMPLATES)
    assert ps.anomalous == ("scratched {}",)
    normal, anomalous = ps.prompts("object")
    assert len(normal) == 154
    assert len(anomalous) == 22
    # an empty object is the paper's ensemble
    assert load_prompt_file(write_json(tmp_path / "e.json", {})) == PromptSet()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "JSON object"),
        ("normal", "JSON object"),
        ({"normal": ["{}"], "colour": ["{}"]}, "unknown key"),
        ({"normal": []}, "non-empty list"),
        ({"templates": []}, "non-empty list"),
        ({"anomalous": "damaged {}"}, "non-empty list"),
        ({"normal": {"a": "{}"}}, "non-empty list"),
        ({"normal": ["flawless object"]}, "exactly one"),
        ({"templates": ["a {} of a {}"]}, "exactly one"),
        ({"anomalous": [3]}, "exactly one"),
        ({"anomalous": ["damaged {}", None]}, "exactly one"),
    ],
)
def test_prompt_file_validation_errors(tmp_path, data, message):
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(PromptFileError, match=message) as info:
        load_prompt_file(path)
    assert "bad.json" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_prompt_file_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{normal: [", encoding="utf-8")
    with pytest.raises(PromptFileError, match="not valid JSON") as info:
        load_prompt_file(path)
    assert "bad.json" in str(info.value)


def test_prompt_file_not_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(PromptFileError, match=r"bad\.json"):
        load_prompt_file(path)


def test_prompt_file_missing(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read") as info:
        load_prompt_file(tmp_path / "nowhere.json")
    assert "nowhere.json" in str(info.value)


def test_prompt_file_is_a_folder(tmp_path):
    with pytest.raises(PromptFileError):
        load_prompt_file(tmp_path)


def test_presets_by_name_and_files_by_path(tmp_path, monkeypatch):
    from winclip_cli.prompts import resolve_prompts

    assert resolve_prompts(None) == PromptSet() == resolve_prompts("winclip")
    normal, anomalous = resolve_prompts("clip-ac").prompts("metal_nut")
    assert (normal, anomalous) == (
        ["a photo of a normal metal nut."],
        ["a photo of a anomalous metal nut."],
    )
    # A preset name wins over a file of that name in the current folder; ./NAME is the file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip-ac").write_text(json.dumps({"templates": ["{} close up."]}))
    assert resolve_prompts("clip-ac").templates == ("a photo of a {}.",)
    assert resolve_prompts("./clip-ac").templates == ("{} close up.",)
    with pytest.raises(PromptFileError):
        resolve_prompts("no-such-preset-or-file")


def test_clip_ac_preset_scores_differ_from_winclip(tiny, cache_dir, tmp_path):
    """`--prompts clip-ac` reaches the text side: other prompts, other scores."""
    image = tmp_path / "part.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    base = ["score", image, "--model", tiny["local_dir"], "--workers", "0"]
    winclip = run_runner(base)
    clip_ac = run_runner([*base, "--prompts", "clip-ac"])
    assert winclip.code == clip_ac.code == 0
    assert winclip.stdout.splitlines()[0] == clip_ac.stdout.splitlines()[0]
    assert winclip.stdout != clip_ac.stdout
    assert run_runner([*base, "--prompts", "nonsense"]).code == 2
