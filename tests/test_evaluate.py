"""`winclip eval` library: dataset discovery, errors, and an end-to-end run on tiny trees."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from tests.helpers import SIZE, make_mvtec, make_visa, save
from winclip_cli.commands.eval_run import draw_references
from winclip_cli.commands.evaluate import run_evaluation
from winclip_cli.datasets import discover, load_mask
from winclip_cli.errors import DatasetError
from winclip_cli.metrics import METRIC_KEYS, image_metrics
from winclip_cli.model import upsample

# ----- discovery ----------------------------------------------------------------------


def test_discover_mvtec(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    found = discover(root)
    assert [d.name for d in found] == ["bottle", "metal_nut"]
    bottle = found[0]
    assert bottle.layout == "mvtec"
    assert len(bottle.train_good) == 3
    assert [s.label for s in bottle.test] == [1, 1, 0, 0]  # test/crack before test/good
    assert all(s.mask is not None and s.mask.name.endswith("_mask.png") for s in bottle.test[:2])
    assert all(s.mask is None for s in bottle.test[2:])
    assert bottle.num_anomalous == 2
    assert [d.name for d in discover(root, "mvtec", ["metal_nut"])] == ["metal_nut"]


def test_discover_mvtec_category_folder_as_root(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    [only] = discover(root / "bottle")
    assert only.name == "bottle" and len(only.test) == 4


def test_discover_visa(tmp_path):
    root = make_visa(tmp_path / "visa")
    found = discover(root)
    assert [d.name for d in found] == ["candle", "pcb1"]
    candle = found[0]
    assert candle.layout == "visa"
    assert len(candle.train_good) == 3
    assert sorted(s.label for s in candle.test) == [0, 0, 1, 1]
    assert all((s.mask is not None) == bool(s.label) for s in candle.test)
    assert [d.name for d in discover(root, "visa", ["pcb1"])] == ["pcb1"]


def test_selecting_a_category_ignores_broken_others(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "crack" / "000_mask.png").unlink()
    assert [d.name for d in discover(root, categories=["metal_nut"])] == ["metal_nut"]


def _missing_mask(root: Path) -> None:
    (root / "metal_nut" / "ground_truth" / "crack" / "001_mask.png").unlink()


def _broken_mask(root: Path) -> None:
    (root / "metal_nut" / "ground_truth" / "crack" / "001_mask.png").write_bytes(b"not a png")


def _stretched_mask(root: Path) -> None:
    path = root / "metal_nut" / "ground_truth" / "crack" / "001_mask.png"
    with Image.open(path) as mask:
        mask.resize((mask.width * 2, mask.height // 3)).save(path)


def _empty_category(root: Path) -> None:
    (root / "screw" / "test" / "good").mkdir(parents=True)
    (root / "screw" / "train" / "good").mkdir(parents=True)


@pytest.mark.parametrize(
    ("breakage", "kwargs", "message"),
    [
        (_missing_mask, {}, r"no ground-truth mask for .*001\.png"),
        (_broken_mask, {}, r"cannot read mask .*001_mask\.png"),
        (_stretched_mask, {}, r"mask .*001_mask\.png is .* would not line up"),
        (_empty_category, {}, "category screw has no test images"),
        (None, {"categories": ["carpet"]}, "unknown category carpet.*available: bottle, metal_nut"),
        (None, {"layout": "visa"}, "not a VisA tree"),
        (None, {"layout": "kolektor"}, "unknown layout 'kolektor'"),
    ],
)
def test_malformed_mvtec_trees(tmp_path, breakage, kwargs, message):
    root = make_mvtec(tmp_path / "mvtec")
    if breakage is not None:
        breakage(root)
    with pytest.raises(DatasetError, match=message) as info:
        discover(root, **kwargs)
    assert "\n" not in str(info.value)


def test_a_mask_of_another_size_but_the_same_shape_is_fine(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    path = root / "metal_nut" / "ground_truth" / "crack" / "001_mask.png"
    with Image.open(path) as mask:
        mask.resize((mask.width * 2, mask.height * 2)).save(path)
    assert [d.name for d in discover(root)] == ["bottle", "metal_nut"]


def test_an_empty_mask_of_an_anomalous_image_is_warned_about(tmp_path, wc):
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",))
    path = root / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    with Image.open(path) as mask:
        Image.new(mask.mode, mask.size, 0).save(path)
    with pytest.warns(UserWarning, match=r"mask of anomalous image .*001\.png is empty"):
        run_evaluation(wc, root)


def test_no_layout_detected(tmp_path):
    (tmp_path / "photos").mkdir()
    save(tmp_path / "photos" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match="no dataset layout found"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        discover(tmp_path / "nope")


def _rewrite_csv(root: Path, edit) -> None:
    path = root / "split_csv" / "1cls.csv"
    rows = list(csv.reader(path.open()))
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(edit(rows))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: [r[:4] for r in rows], "lacks the column.*mask"),
        (lambda rows: [*rows, ["pcb1", "test", "normal", "pcb1/gone.JPG", ""]], "not found"),
        (lambda rows: [*rows, ["pcb1", "test", "anomaly", rows[-1][3], ""]], "mask of"),
        (lambda rows: [*rows, ["pcb1", "test", "weird", rows[-1][3], ""]], "unknown label"),
    ],
)
def test_malformed_visa_trees(tmp_path, edit, message):
    root = make_visa(tmp_path / "visa")
    _rewrite_csv(root, edit)
    with pytest.raises(DatasetError, match=message) as info:
        discover(root)
    assert "\n" not in str(info.value)


def test_load_mask_nearest_and_binarised(tmp_path):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[10:30, 20:40] = 1  # 0/1 masks count as well as 0/255
    got = load_mask(save(tmp_path / "m.png", mask), (48, 48))
    assert got.dtype == bool and got.shape == (48, 48)
    assert got.sum() == 24 * 24  # nearest: 20 px of 40 -> 24 of 48, both ways
    assert not load_mask(None, (48, 48)).any()
    wide = Image.fromarray(mask.astype(np.uint16))  # 16-bit 0/1 masks stay 0/1
    wide.save(tmp_path / "w.png")
    assert load_mask(tmp_path / "w.png", (48, 48)).sum() == 24 * 24
    (tmp_path / "bad.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="cannot read mask"):
        load_mask(tmp_path / "bad.png", (48, 48))


def test_draw_references_is_seeded(tmp_path):
    [data] = discover(make_mvtec(tmp_path / "mvtec", categories=("bottle",), train=6))
    first = draw_references(data, 2, seed=0)
    assert first == draw_references(data, 2, seed=0)
    assert len(set(first)) == 2 and set(first) <= set(data.train_good)
    draws = {tuple(draw_references(data, 2, seed=s)) for s in range(5)}
    assert len(draws) > 1
    with pytest.raises(DatasetError, match="7-shot needs 7 training normal images, found 6"):
        draw_references(data, 7, seed=0)


# ----- end to end ---------------------------------------------------------------------


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_evaluation_end_to_end(tmp_path, wc):
    root = make_mvtec(tmp_path / "mvtec")
    scores_path, json_path = tmp_path / "scores.csv", tmp_path / "results.json"
    table, events = io.StringIO(), []
    results = run_evaluation(
        wc, root, shots=[0, 1], seeds=2, batch_size=3, scores_path=scores_path,
        json_path=json_path, compare=True, table_stream=table, progress=events.append,
    )  # fmt: skip
    assert json.loads(json_path.read_text()) == results

    # Every figure, per category and k: mean / std over seeds and one entry per run.
    assert results["shots"] == [0, 1] and results["seeds"] == [0, 1]
    for name in ("bottle", "metal_nut"):
        shots = results["categories"][name]["shots"]
        assert [r["seed"] for r in shots["0"]["runs"]] == [0]  # zero-shot runs once
        assert [r["seed"] for r in shots["1"]["runs"]] == [0, 1]
        for entry in shots.values():
            assert set(entry["mean"]) == set(METRIC_KEYS) == set(entry["std"])
            for run in entry["runs"]:
                assert all(0 <= run[key] <= 1 for key in METRIC_KEYS)
                assert len(run["references"]) == (1 if entry is shots["1"] else 0)
    for k in ("0", "1"):
        assert set(results["mean"][k]["mean"]) == set(METRIC_KEYS)
    one_shot = results["categories"]["bottle"]["shots"]["1"]
    pro = [r["pixel_pro"] for r in one_shot["runs"]]
    assert one_shot["mean"]["pixel_pro"] == pytest.approx(np.mean(pro))
    assert one_shot["std"]["pixel_pro"] == pytest.approx(np.std(pro))

    # The scores CSV gives back the reported image metrics exactly.
    rows = read_scores(scores_path)
    assert list(rows[0]) == ["category", "k", "seed", "path", "label", "score"]
    assert len(rows) == 2 * 3 * 4  # categories x runs x test images
    groups = defaultdict(list)
    for row in rows:
        groups[row["category"], row["k"], int(row["seed"])].append(row)
    for (name, k, seed), group in groups.items():
        labels = np.array([int(r["label"]) for r in group])
        scores = np.array([float(r["score"]) for r in group])
        [run] = [r for r in results["categories"][name]["shots"][k]["runs"] if r["seed"] == seed]
        assert run["image_auroc"] == skm.roc_auc_score(labels, scores)
        assert run["image_ap"] == skm.average_precision_score(labels, scores)
        assert run["image_f1max"] == image_metrics(labels, scores)["image_f1max"]

    text = table.getvalue()
    for word in ("bottle", "metal_nut", "mean", "0-shot", "1-shot", "I-AUROC", "PRO"):
        assert word in text
    assert "MVTec AD" in text and "93.1" in text  # the paper's 1-shot image AUROC
    assert results["paper"]["shots"]["1"]["paper"]["image_auroc"] == 0.931
    assert events[-1].run == events[-1].runs == 6 and events[-1].done == events[-1].total == 4


def test_zero_shot_matches_direct_prediction(tmp_path, wc):
    root = make_mvtec(tmp_path / "mvtec", categories=("metal_nut",))
    results = run_evaluation(wc, root, scores_path=tmp_path / "s.csv")
    [data] = discover(root)
    x = torch.stack([wc.preprocess(Image.open(s.path)) for s in data.test])
    pred = wc.predict(x, text=wc.text_embeddings("metal nut"), maps=True)
    rows = read_scores(tmp_path / "s.csv")
    assert [float(r["score"]) for r in rows] == pytest.approx(pred.image_scores.tolist(), abs=1e-6)
    maps = upsample(pred.grid_maps, wc.input_size).numpy().ravel()
    masks = np.stack([load_mask(s.mask, wc.input_size) for s in data.test]).ravel()
    run = results["categories"]["metal_nut"]["shots"]["0"]["runs"][0]
    assert run["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks, maps), abs=1e-3)
    assert results["categories"]["metal_nut"]["class_name"] == "metal_nut"


def test_run_evaluation_visa_with_class_name(tmp_path, wc):
    root = make_visa(tmp_path / "visa", objects=("pcb1",))
    table = io.StringIO()
    results = run_evaluation(
        wc, root, class_name="circuit board", compare=True, table_stream=table, shots=[0, 2]
    )
    assert results["dataset"]["layout"] == "visa"
    assert results["categories"]["pcb1"]["class_name"] == "circuit board"
    assert results["paper"]["shots"]["2"] is None  # no published VisA 2-shot figure
    assert "pcb1" in table.getvalue() and "no published figure for 2-shot" in table.getvalue()


def test_unreadable_anomalous_image_is_a_clear_error(tmp_path, wc):
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",))
    (root / "bottle" / "test" / "crack" / "001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*001\.png"):
        run_evaluation(wc, root)


def test_too_few_references_fails_before_any_scoring(tmp_path, wc):
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",), train=1)
    scores_path = tmp_path / "s.csv"
    with pytest.raises(DatasetError, match="2-shot needs 2 training normal images"):
        run_evaluation(wc, root, shots=[0, 2], scores_path=scores_path)
    assert not scores_path.exists()


def test_fewshot_and_eval_pick_the_same_references(tmp_path):
    """The same folder and --seed give the same K references in fewshot and eval (eval
    used to draw with Random(seed).sample, fewshot shuffled and took the first K)."""
    from winclip_cli.options import RunOptions
    from winclip_cli.planning import plan

    root = make_mvtec(tmp_path / "mvtec", categories=("bottle",), train=8)
    [data] = discover(root)
    good = root / "bottle" / "train" / "good"
    differs = False
    for seed in (None, 0, 1, 2, 3):
        opts = RunOptions(inputs=[root / "bottle" / "test"], ref=good, k=3, seed=seed)
        with plan(opts) as checked:
            fewshot = [image.path for image in checked.references.images]
        assert fewshot == draw_references(data, 3, seed)
        differs |= seed is not None and fewshot != sorted(data.train_good)[:3]
    assert differs  # the seed matters, so the comparison above means something
