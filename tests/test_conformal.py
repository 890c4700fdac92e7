"""Split-conformal calibration (WINCLIP.md "Calibrated decisions") against slow references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from winclip_cli.bank import ReferenceBank, save_bank
from winclip_cli.conformal import (
    Calibration,
    CalibrationError,
    check_settings,
    conformal_rank,
    images_needed,
    is_anomalous,
    load_calibration,
    p_value,
    p_values,
    save_calibration,
    supported_rates,
    threshold,
)

# ------------------------------------------------------------------ slow references


def ref_rank(n: int, alpha: str) -> int | None:
    """The smallest k with k / (n + 1) >= 1 - alpha, counted up one by one; None if > n."""
    a = Fraction(alpha)
    k = 1
    while Fraction(k, n + 1) < 1 - a:
        k += 1
    return k if k <= n else None


def ref_p(s: float, cal: list[float]) -> Fraction:
    count = 0
    for c in cal:
        if c >= s:
            count += 1
    return Fraction(1 + count, len(cal) + 1)


def ref_threshold(cal: list[float], alpha: str) -> float:
    return sorted(cal)[ref_rank(len(cal), alpha) - 1]


RATES = [
    "0.5",
    "0.41",
    "0.3",
    "0.25",
    "0.2",
    "0.1",
    "0.05",
    "0.03",
    "0.02",
    "0.01",
    "0.005",
    "0.001",
]


# ------------------------------------------------------------------------ the rank


@pytest.mark.parametrize("alpha", RATES)
def test_rank_matches_the_counting_reference(alpha):
    needed = math.ceil(1 / Fraction(alpha) - 1)
    for n in [*range(1, 400), *range(needed - 3, needed + 4), 1999, 5000]:
        if n < 1:
            continue
        expected = ref_rank(n, alpha)
        if expected is None:
            with pytest.raises(CalibrationError):
                conformal_rank(n, float(alpha))
        else:
            assert conformal_rank(n, float(alpha)) == expected, n


def test_rank_is_exact_where_floats_are_not():
    assert conformal_rank(99, 0.01) == 99
    assert conformal_rank(99, 0.41) == 59
    assert math.ceil(100 * (1 - 0.41)) == 60  # what plain floats would say
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(200, 0.01) == 199


@pytest.mark.parametrize("alpha", RATES)
def test_exactly_enough_images_work_and_one_fewer_is_refused(alpha):
    a = Fraction(alpha)
    needed = math.ceil(1 / a - 1)
    assert images_needed(float(alpha)) == needed
    assert conformal_rank(needed, float(alpha)) == needed  # k = n: the maximum
    if needed > 1:
        n = needed - 1
        with pytest.raises(CalibrationError) as err:
            conformal_rank(n, float(alpha))
        message = str(err.value)
        assert f"at least {needed} known-good" in message
        assert f"(1/{n + 1})" in message
        assert "\n" not in message


def test_refusal_prints_a_smallest_rate_that_then_works():
    # 1/98 = 0.010204...: printed rounded UP, so passing the printed value is accepted.
    with pytest.raises(CalibrationError, match=r"allow is 0\.0103 \(1/98\)") as err:
        conformal_rank(97, 0.01)
    assert "needs at least 99 known-good images, these are 97" in str(err.value)
    assert conformal_rank(97, 0.0103) == 97
    with pytest.raises(CalibrationError):
        conformal_rank(97, 0.0102)


def test_rate_one_over_n_plus_one_is_the_smallest_allowed():
    for n in range(1, 3000):
        assert conformal_rank(n, 1 / (n + 1)) == n, n  # float input, as a user computes it
        assert conformal_rank(n, Fraction(1, n + 1)) == n
        with pytest.raises(CalibrationError):
            conformal_rank(n, Fraction(1, n + 2))


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "0.1", None, True])
def test_bad_rates_are_refused(alpha):
    with pytest.raises(CalibrationError):
        conformal_rank(10, alpha)


@pytest.mark.parametrize("n", [0, -3, 2.0, True])
def test_bad_counts_are_refused(n):
    with pytest.raises(CalibrationError):
        conformal_rank(n, 0.5)


# ---------------------------------------------------------- threshold and p-values


def random_cases(count: int, seed: int):
    """(calibration, tests) pairs, half of them on a coarse grid so that ties abound."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(1, 60))
        if i % 2:
            cal = rng.integers(0, 5, n).astype(float) / 4  # many ties, tests hit them too
            tests = rng.integers(-1, 7, 12).astype(float) / 4
        else:
            cal = rng.normal(size=n)
            tests = np.concatenate([rng.normal(size=8), rng.choice(cal, 4)])
        yield cal, tests


def test_threshold_matches_sorted():
    for cal, _ in random_cases(150, seed=1):
        for alpha in RATES:
            if ref_rank(len(cal), alpha) is None:
                with pytest.raises(CalibrationError):
                    threshold(cal, float(alpha))
            else:
                assert threshold(cal, float(alpha)) == ref_threshold(list(cal), alpha)


def test_p_values_match_the_counting_loop():
    for cal, tests in random_cases(300, seed=2):
        got = p_values(tests, cal)
        assert got.dtype == np.float64 and got.shape == tests.shape
        for s, p in zip(tests, got, strict=True):
            assert p == float(ref_p(s, list(cal)))
            assert p_value(s, cal) == p


def test_p_values_with_ties_by_hand():
    cal = [0.2, 0.5, 0.5, 0.5, 0.9]
    # s equal to a calibration score counts it (c_i >= s).
    assert p_values([0.5, 0.50001, 0.2, 0.1, 0.9, 1.0], cal).tolist() == [
        5 / 6,
        2 / 6,
        6 / 6,
        6 / 6,
        2 / 6,
        1 / 6,
    ]


def test_p_values_keep_shape_and_nan():
    cal = np.arange(10.0)
    grid = np.array([[0.0, 9.5], [float("nan"), 4.0]])
    got = p_values(grid, cal)
    assert got.shape == (2, 2)
    assert np.isnan(got[1, 0])
    assert not is_anomalous(got[1, 0], 0.5)  # a NaN score is never called anomalous


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]], [float("inf")]])
def test_bad_calibration_scores_are_refused(bad):
    with pytest.raises(CalibrationError):
        p_values([0.5], bad)
    with pytest.raises(CalibrationError):
        threshold(bad, 0.5)


def test_decision_by_p_value_equals_decision_by_threshold():
    checked = 0
    for cal, tests in random_cases(200, seed=3):
        n = len(cal)
        rates = [float(a) for a in RATES] + [1 / (n + 1), 2 / (n + 1), 0.999]
        for alpha in rates:
            try:
                t = threshold(cal, alpha)
            except CalibrationError:
                continue
            for s, p in zip(tests, p_values(tests, cal), strict=True):
                by_p = is_anomalous(p, alpha)
                assert by_p == (s > t), (list(cal), s, alpha)
                # and both equal the definition, in exact arithmetic
                assert by_p == (
                    ref_p(s, list(cal)) <= Fraction(repr(alpha)).limit_denominator(10**6)
                )
                checked += 1
    assert checked > 5_000


def test_supported_rates_line():
    line = supported_rates(200)
    assert line == (
        "n=200 known-good images support false-alarm rates from 0.00498 (1/(n+1)); "
        "0.01 needs 99, 0.001 needs 999"
    )
    assert conformal_rank(200, 0.00498) == 200
    assert "from 0.5 " in supported_rates(1)
    with pytest.raises(CalibrationError):
        supported_rates(0)


# ---------------------------------------------------------------- the guarantee


TRIALS = 20_000  # 3 standard errors at alpha = 0.05 are then 0.0046


def realised_far(n: int, rule, seed: int, discrete: bool = False) -> float:
    """Fraction of trials where one fresh good image is called anomalous.

    Each trial draws a new calibration set and one test image from the same (seeded)
    distribution, i.e. exchangeable scores.
    """
    rng = np.random.default_rng(seed)
    draws = rng.gamma(2.0, 0.05, size=(TRIALS, n + 1)) + 0.2
    if discrete:
        draws = np.round(draws, 2)  # scores that bunch within hundredths: many ties
    alarms = 0
    for row in draws:
        alarms += rule(row[:n], row[n])
    return alarms / TRIALS


def tolerance(alpha: float) -> float:
    return 3 * math.sqrt(alpha * (1 - alpha) / TRIALS)


def conformal_rule(alpha):
    def rule(cal, s):
        return is_anomalous(p_value(s, cal), alpha)

    return rule


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("discrete", [False, True])
def test_false_alarm_rate_is_at_most_alpha(alpha, discrete):
    far = realised_far(99, conformal_rule(alpha), seed=10, discrete=discrete)
    assert far <= alpha + tolerance(alpha), far
    if not discrete:
        # With continuous scores the rate is exactly floor(alpha (n + 1)) / (n + 1) = alpha
        # at n = 99: the threshold spends the whole budget, it isn't merely conservative.
        assert far >= alpha - tolerance(alpha), far


def test_the_plain_maximum_is_over_conservative():
    alpha = 0.1
    far_max = realised_far(99, lambda cal, s: s > max(cal), seed=11)
    far_conformal = realised_far(99, conformal_rule(alpha), seed=11)
    # The maximum of 99 good scores is beaten by a new good one 1 time in 100, not 10.
    assert abs(far_max - 0.01) <= tolerance(0.01)
    assert far_max < alpha / 5
    assert far_conformal >= alpha - tolerance(alpha)


def test_clipping_to_the_maximum_breaks_the_guarantee_on_few_images():
    alpha, n = 0.1, 5
    with pytest.raises(CalibrationError):
        conformal_rank(n, alpha)  # needs 9 images
    # What a clipped rule would do: k -> n, threshold c_(n). It alarms 1 time in 6.
    far = realised_far(n, lambda cal, s: s > sorted(cal)[n - 1], seed=12)
    assert far > alpha + tolerance(alpha), far
    assert abs(far - 1 / (n + 1)) <= tolerance(1 / (n + 1))


# ------------------------------------------------------------------ the file


def tiny_bank(seed: int = 0) -> ReferenceBank:
    g = torch.Generator().manual_seed(seed)
    return ReferenceBank(
        torch.randn(2 * 9, 8, generator=g),
        {2: torch.randn(2 * 4, 6, generator=g), 3: torch.randn(2 * 1, 6, generator=g)},
        {"num_images": 2, "model": "tiny", "grid": [3, 3]},
    )


SETTINGS = {
    "model": "ViT-B-16-plus-240",
    "weights": "laion400m_e31",
    "prompts": {"normal": ["a photo of a {}"], "anomalous": ["a photo of a broken {}"]},
    "class": "screw",
    "temperature": 0.07,
    "scales": [2, 3],
    "tiles": None,
    "mode": "fewshot",
    "k": 2,
    "precision": "bf16",  # what the scores were computed in (never "auto")
}


def make_cal(maps: bool, bank: bool, n: int = 7) -> Calibration:
    rng = np.random.default_rng(5)
    # Values that float32 would round: the file must keep all 64 bits.
    scores = rng.normal(0.5, 0.01, n) + 1e-12
    return Calibration(
        settings=SETTINGS,
        scores=scores,
        map_maxima=rng.normal(0.6, 0.01, n) if maps else None,
        bank=tiny_bank() if bank else None,
        images=[f"good/{i:03d}.png" for i in range(n)],
    )


@pytest.mark.parametrize("maps", [False, True])
@pytest.mark.parametrize("bank", [False, True])
def test_round_trip(tmp_path, maps, bank):
    cal = make_cal(maps, bank)
    path = tmp_path / "screw.cal"
    save_calibration(cal, path)
    back = load_calibration(path)
    assert back.settings == SETTINGS
    assert back.scores.dtype == np.float64
    assert back.scores.tobytes() == cal.scores.tobytes()
    assert back.images == cal.images
    assert back.n == 7
    if maps:
        assert back.map_maxima.tobytes() == cal.map_maxima.tobytes()
        assert back.pixel_threshold(0.125) == sorted(cal.map_maxima)[6]
    else:
        assert back.map_maxima is None
        with pytest.raises(CalibrationError, match="no map maxima"):
            back.pixel_threshold(0.125)
    if bank:
        assert torch.equal(back.bank.patch_tokens, cal.bank.patch_tokens)
        assert back.bank.windows.keys() == {2, 3}
        for k in (2, 3):
            assert torch.equal(back.bank.windows[k], cal.bank.windows[k])
        assert back.bank.meta == cal.bank.meta
    else:
        assert back.bank is None
    assert back.threshold(0.125) == sorted(cal.scores)[6]
    assert back.p_values(cal.scores).tolist() == p_values(cal.scores, cal.scores).tolist()
    assert not list(tmp_path.glob(".winclip-*"))  # no temporary file left behind


def test_any_json_setting_survives(tmp_path):
    settings = {"a": [1, 2.5, None, True, "x"], "b": {"c": {"d": []}}, "e": "ünï\n"}
    settings["precision"] = "fp32"  # a file without one is read as fp32 (older files)
    cal = Calibration(settings, [0.1], None, None, ["x.png"])
    save_calibration(cal, tmp_path / "x.cal")
    assert load_calibration(tmp_path / "x.cal").settings == settings


def test_calibration_checks_its_fields():
    with pytest.raises(CalibrationError, match="2 calibration image names for 3"):
        Calibration({}, [1.0, 2.0, 3.0], None, None, ["a", "b"])
    with pytest.raises(CalibrationError, match="2 map maxima for 3"):
        Calibration({}, [1.0, 2.0, 3.0], [1.0, 2.0], None, ["a", "b", "c"])
    with pytest.raises(CalibrationError, match="NaN"):
        Calibration({}, [1.0, float("nan")], None, None, ["a", "b"])
    with pytest.raises(CalibrationError, match="JSON"):
        Calibration({"x": object()}, [1.0], None, None, ["a"])


def corrupt(path, payload_edit):
    """Rewrite a calibration file with its payload edited (bypassing the checks)."""
    payload = torch.load(path, weights_only=True)
    payload_edit(payload)
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "not a readable calibration file"),
        ("random", "not a readable calibration file"),
        ("empty", "not a readable calibration file"),
        ("text", "not a readable calibration file"),
        ("bank", "is a reference bank, not a calibration file"),
        ("other_torch", "not a winclip calibration file"),
        ("version", "version 2 unsupported"),
        ("nan_score", "NaN"),
        ("nan_maximum", "NaN"),
        ("lengths", "map maxima for"),
        ("images", "image names for"),
        ("settings_json", "damaged calibration file"),
        ("scores_float32_2d", "damaged calibration file: field scores"),
        ("no_scores", "damaged calibration file"),
        ("bank_damaged", "damaged reference bank"),
        ("missing", "not found"),
        ("folder", "not a readable calibration file"),
    ],
)
def test_damaged_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "screw.cal"
    save_calibration(make_cal(maps=True, bank=True), path)
    data = path.read_bytes()
    edits = {
        "version": lambda p: p.update(version=2),
        "nan_score": lambda p: p["scores"].__setitem__(3, float("nan")),
        "nan_maximum": lambda p: p["map_maxima"].__setitem__(0, float("inf")),
        "lengths": lambda p: p.update(map_maxima=p["map_maxima"][:-1]),
        "images": lambda p: p.update(images=p["images"][:-1]),
        "settings_json": lambda p: p.update(settings="{not json"),
        "scores_float32_2d": lambda p: p.update(scores=p["scores"].float()[None]),
        "no_scores": lambda p: p.pop("scores"),
        "bank_damaged": lambda p: p["bank"].pop("patch_tokens"),
    }
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("threshold = 0.5\n")
    elif damage == "bank":
        save_bank(tiny_bank(), path)
    elif damage == "other_torch":
        torch.save({"scores": torch.zeros(3)}, path)
    elif damage == "missing":
        path.unlink()
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        corrupt(path, edits[damage])
    with pytest.raises(CalibrationError) as err:
        load_calibration(path)
    text = str(err.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_truncation_anywhere_is_refused(tmp_path):
    path = tmp_path / "c.cal"
    save_calibration(make_cal(maps=True, bank=True), path)
    data = path.read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        with pytest.raises(CalibrationError):
            load_calibration(path)


# ------------------------------------------------------------------ the settings


def test_same_settings_pass():
    check_settings(SETTINGS, dict(SETTINGS), "screw.cal")
    # A tuple from the run equals the list the file holds.
    check_settings({"scales": [2, 3]}, {"scales": (2, 3)}, "screw.cal")


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_each_differing_setting_is_named(key):
    current = dict(SETTINGS)
    current[key] = "something else"
    with pytest.raises(CalibrationError) as err:
        check_settings(SETTINGS, current, "screw.cal")
    text = str(err.value)
    assert text.startswith(f"screw.cal was made with {key} ")
    assert text.endswith(", this run has 'something else'")


def test_difference_messages():
    with pytest.raises(CalibrationError) as err:
        check_settings(SETTINGS, {**SETTINGS, "class": "nut"}, "screw.cal")
    assert str(err.value) == "screw.cal was made with class 'screw', this run has 'nut'"

    # The first difference, in the file's order, and inside nested values.
    changed = {**SETTINGS, "weights": "openai", "k": 4}
    with pytest.raises(CalibrationError, match="with weights 'laion400m_e31', this run has"):
        check_settings(SETTINGS, changed, "s.cal")
    prompts = {"normal": ["a photo of a {}"], "anomalous": ["a photo of a cracked {}"]}
    with pytest.raises(CalibrationError) as err:
        check_settings(SETTINGS, {**SETTINGS, "prompts": prompts}, "s.cal")
    assert str(err.value) == (
        "s.cal was made with prompts.anomalous[0] 'a photo of a broken {}', "
        "this run has 'a photo of a cracked {}'"
    )

    # Keys in only one of them.
    with pytest.raises(CalibrationError, match=r"s\.cal was made without tile_overlap, this run"):
        check_settings(SETTINGS, {**SETTINGS, "tile_overlap": 0.25}, "s.cal")
    fewer = {k: v for k, v in SETTINGS.items() if k != "temperature"}
    with pytest.raises(CalibrationError, match=r"made with temperature 0\.07, this run has none"):
        check_settings(SETTINGS, fewer, "s.cal")

    # Same value, different types that matter; and lists of other lengths.
    with pytest.raises(CalibrationError, match="with k 1, this run has True"):
        check_settings({"k": 1}, {"k": True}, "s.cal")
    with pytest.raises(CalibrationError, match=r"scales \[2, 3\], this run has \[2, 3, 4\]"):
        check_settings({"scales": [2, 3]}, {"scales": [2, 3, 4]}, "s.cal")
    check_settings({"temperature": 1}, {"temperature": 1.0}, "s.cal")  # one number


def test_settings_that_are_not_json_are_named():
    with pytest.raises(CalibrationError, match=r"^s\.cal: settings are not plain JSON"):
        check_settings({"x": float("nan")}, {}, "s.cal")
    with pytest.raises(CalibrationError, match=r"^this run's settings must be a mapping"):
        check_settings({}, ["x"], "s.cal")
