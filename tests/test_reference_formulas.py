"""Every formula of WINCLIP.md against a slow, obvious reference (explicit Python loops).

The references below never call the engine: token sequences are built by hand from
open_clip's own modules (conv1, class/positional embedding, ln_pre, the Transformer,
ln_post, proj), and every score, aggregation and map is computed cell by cell, window
by window and bank entry by bank entry in plain Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.test_prompts import SPEC_ANOMALOUS, SPEC_NORMAL, SPEC_TEMPLATES  # copied from the spec
from winclip_cli.model import WinClip, association, p_anomalous, upsample
from winclip_cli.prompts import PromptSet
from winclip_cli.windows import harmonic_aggregate, window_indices

ATOL = 1e-5

# --------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------


def ref_window_indices(grid_h: int, grid_w: int, k: int) -> list[list[int]]:
    """Every k x k block at stride 1: loop over top-left positions, then offsets."""
    windows = []
    for top in range(grid_h - k + 1):
        for left in range(grid_w - k + 1):
            cells = []
            for dr in range(k):
                for dc in range(k):
                    cells.append((top + dr) * grid_w + (left + dc))
            windows.append(cells)
    return windows


def inv(x: float) -> float:
    return math.inf if x == 0 else 1.0 / x


def ref_cos(a: list[float], b: list[float]) -> float:
    dot = 0.0
    na = 0.0
    nb = 0.0
    for x, y in zip(a, b, strict=True):
        dot += x * y
        na += x * x
        nb += y * y
    return dot / math.sqrt(na * nb)


def ref_p_anomalous(f: list[float], text: list[list[float]], tau: float) -> float:
    """softmax(cos(f, T0) / tau, cos(f, T1) / tau)[1], written out."""
    e0 = math.exp(ref_cos(f, text[0]) / tau)
    e1 = math.exp(ref_cos(f, text[1]) / tau)
    return e1 / (e0 + e1)


def ref_harmonic(scores: list[float], windows: list[list[int]], num_cells: int) -> list[float]:
    """M[c] = n_c / sum over windows covering c of 1 / s_w (a zero score gives 0)."""
    out = []
    for c in range(num_cells):
        covering = [scores[w] for w, cells in enumerate(windows) if c in cells]
        assert covering, f"cell {c} is covered by no window"
        total = 0.0
        for s in covering:
            total += inv(s)
        out.append(len(covering) / total)
    return out


def ref_association(q: list[float], bank: list[list[float]]) -> float:
    """min over bank entries b of (1 - cos(q, b)) / 2."""
    best = math.inf
    for b in bank:
        best = min(best, (1.0 - ref_cos(q, b)) / 2.0)
    return best


def as_lists(t: torch.Tensor) -> list:
    return t.detach().double().cpu().tolist()


@torch.no_grad()
def ref_tokens(wc: WinClip, image: torch.Tensor) -> list[torch.Tensor]:
    """Class token + one token per patch (row-major), plus positions: the input of ln_pre.

    Each patch token is conv1 applied to that patch alone.
    """
    v = wc.visual
    ph, pw = v.conv1.kernel_size
    gh, gw = wc.grid_size
    tokens = [v.class_embedding + v.positional_embedding[0]]
    for r in range(gh):
        for c in range(gw):
            patch = image[:, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
            emb = v.conv1(patch[None])[0, :, 0, 0]
            tokens.append(emb + v.positional_embedding[1 + r * gw + c])
    return tokens


@torch.no_grad()
def ref_run(wc: WinClip, seq: list[torch.Tensor]) -> torch.Tensor:
    """ln_pre, then open_clip's own Transformer forward on one sequence: (L, W)."""
    v = wc.visual
    x = v.ln_pre(torch.stack(seq))
    return v.transformer(x[None])[0]


@torch.no_grad()
def ref_project(wc: WinClip, class_token: torch.Tensor) -> torch.Tensor:
    v = wc.visual
    return F.normalize(v.ln_post(class_token) @ v.proj, dim=-1)


@torch.no_grad()
def ref_window_embedding(wc: WinClip, tokens: list[torch.Tensor], cells: list[int]) -> torch.Tensor:
    """Class token + the window's patch tokens as their own sequence."""
    seq = [tokens[0]] + [tokens[1 + c] for c in cells]
    return ref_project(wc, ref_run(wc, seq)[0])


@torch.no_grad()
def ref_features(wc: WinClip, image: torch.Tensor, scales=(2, 3)) -> dict:
    """Image embedding, patch tokens and window embeddings, all by hand, as float lists."""
    tokens = ref_tokens(wc, image)
    out = ref_run(wc, tokens)
    gh, gw = wc.grid_size
    feats = {
        "embedding": as_lists(ref_project(wc, out[0])),
        "patches": as_lists(F.normalize(wc.visual.ln_post(out[1:]), dim=-1)),
        "windows": {},
    }
    for k in scales:
        feats["windows"][k] = [
            as_lists(ref_window_embedding(wc, tokens, cells))
            for cells in ref_window_indices(gh, gw, k)
        ]
    return feats


def ref_predict(wc, feats, text, tau, scales=(2, 3), bank=None):
    """(image score, grid map as a flat list) from hand-built features, by explicit loops."""
    gh, gw = wc.grid_size
    n = gh * gw
    s_img = ref_p_anomalous(feats["embedding"], text, tau)
    m_k = {}
    a_k = {}
    for k in scales:
        wins = ref_window_indices(gh, gw, k)
        window_scores = [ref_p_anomalous(e, text, tau) for e in feats["windows"][k]]
        m_k[k] = ref_harmonic(window_scores, wins, n)
        if bank is not None:
            assoc = [ref_association(e, bank["windows"][k]) for e in feats["windows"][k]]
            a_k[k] = ref_harmonic(assoc, wins, n)
    m_zs = []
    for c in range(n):
        total = inv(s_img)
        for k in scales:
            total += inv(m_k[k][c])
        m_zs.append((1 + len(scales)) / total)
    if bank is None:
        return s_img, m_zs
    a_p = [ref_association(p, bank["patches"]) for p in feats["patches"]]
    m_fs = []
    for c in range(n):
        parts = [a_p[c]] + [a_k[k][c] for k in scales]
        m_fs.append(sum(parts) / len(parts))
    final = [(m_zs[c] + m_fs[c]) / 2 for c in range(n)]
    return (s_img + max(m_fs)) / 2, final


def ref_bank(wc, refs, scales=(2, 3)) -> dict:
    bank = {"patches": [], "windows": {k: [] for k in scales}}
    for image in refs:
        feats = ref_features(wc, image, scales)
        bank["patches"].extend(feats["patches"])
        for k in scales:
            bank["windows"][k].extend(feats["windows"][k])
    return bank


def random_images(n: int, size=(48, 48), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g)


def random_text(dim: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(2, dim, generator=g), dim=-1)


def assert_close(actual, expected, atol=ATOL):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all()
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol}"


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid_h", "grid_w"), [(15, 15), (6, 6), (4, 7), (7, 4), (1, 5), (3, 3), (16, 12)]
)
def test_window_indices_match_loops(grid_h, grid_w):
    for k in range(1, min(grid_h, grid_w) + 1):
        expected = ref_window_indices(grid_h, grid_w, k)
        got = window_indices(grid_h, grid_w, k)
        assert got.shape == (len(expected), k * k)
        assert got.tolist() == expected
        # every cell is covered when k <= grid size
        assert set(got.reshape(-1).tolist()) == set(range(grid_h * grid_w))


def test_window_counts_on_default_grid():
    assert window_indices(15, 15, 2).shape == (196, 4)
    assert window_indices(15, 15, 3).shape == (169, 9)
    assert len(ref_window_indices(15, 15, 2)) == 196
    assert len(ref_window_indices(15, 15, 3)) == 169


@pytest.mark.parametrize("k", [0, 7, 8])
def test_window_that_does_not_fit_is_refused(k):
    with pytest.raises(ValueError):
        window_indices(6, 6, k)


def test_model_windows_follow_its_grid(wc):
    assert wc.grid_size == (6, 6)
    assert wc.input_size == (48, 48)
    assert wc.scales == (2, 3)
    for k in (2, 3):
        assert wc.windows[k].tolist() == ref_window_indices(6, 6, k)


# --------------------------------------------------------------------------------------
# Input preprocessing
# --------------------------------------------------------------------------------------


def test_preprocess_is_whole_image_bicubic_resize_and_normalise(wc):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8)  # 100 wide, 60 high
    pixels[:, :6] = 0  # a dark stripe at the very left edge: a centre crop would lose it
    pixels[:, 6:] = np.maximum(pixels[:, 6:], 200)
    img = Image.fromarray(pixels, "RGB")
    x = wc.preprocess(img)
    assert x.shape == (3, 48, 48)
    assert x.dtype == torch.float32
    resized = np.asarray(img.resize((48, 48), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    mean, std = wc.backbone.mean, wc.backbone.std
    for ch in range(3):
        expected = (resized[:, :, ch] - mean[ch]) / std[ch]
        assert_close(x[ch], expected)
    # The edge stripe survives (no crop): leftmost column much darker than the rest.
    raw = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert raw[:, :, 0].mean() < 0.2
    assert raw[:, :, 10:].mean() > 0.7


def test_preprocess_grey_image_gives_three_equal_channels(wc):
    img = Image.fromarray(np.arange(64 * 32, dtype=np.uint8).reshape(32, 64) % 251, "L")
    x = wc.preprocess(img)
    raw = x * torch.tensor(wc.backbone.std).view(3, 1, 1) + torch.tensor(wc.backbone.mean).view(
        3, 1, 1
    )
    assert_close(raw[0], raw[1])
    assert_close(raw[1], raw[2])


# --------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------


def test_full_pass_embedding_matches_open_clip_encode_image(wc):
    x = random_images(3)
    feats = wc.encode(x, windows=False, patch_tokens=True)
    with torch.no_grad():
        expected = F.normalize(wc.backbone.clip.encode_image(x), dim=-1)
    assert_close(feats.embedding, expected)
    assert feats.windows == {}
    # and against the hand-built sequence, including the patch tokens after ln_post
    for b in range(3):
        ref = ref_features(wc, x[b], scales=())
        assert_close(feats.embedding[b], ref["embedding"])
        assert_close(feats.patch_tokens[b], ref["patches"])


def test_window_embeddings_match_hand_built_sequences(wc):
    x = random_images(2, seed=3)
    feats = wc.encode(x, windows=True)
    gh, gw = wc.grid_size
    for b in range(2):
        tokens = ref_tokens(wc, x[b])
        for k in (2, 3):
            wins = ref_window_indices(gh, gw, k)
            got = feats.windows[k][b]
            assert got.shape == (len(wins), 32)
            for w, cells in enumerate(wins):
                assert_close(got[w], ref_window_embedding(wc, tokens, cells))


def test_window_embeddings_are_distinct(wc):
    """Regression: a sequence-first permute mixes windows so that all are the same."""
    x = random_images(1, seed=4)
    feats = wc.encode(x, windows=True)
    for k in (2, 3):
        emb = feats.windows[k][0]
        cos = emb @ emb.T
        off_diagonal = cos[~torch.eye(len(emb), dtype=torch.bool)]
        assert off_diagonal.max() < 1 - 1e-4
        assert emb.std(dim=0).mean() > 1e-3
        # and none of them equals the full-image embedding
        assert (emb @ feats.embedding[0]).max() < 1 - 1e-4


def test_window_embedding_sees_only_its_own_patches(wc):
    x = random_images(2, seed=5)
    y = x.clone()
    y[0, :, 40:, 40:] += 3.0  # change only the bottom-right patch (row 5, col 5) of image 0
    fx = wc.encode(x)
    fy = wc.encode(y)
    for k in (2, 3):
        wins = ref_window_indices(6, 6, k)
        for w, cells in enumerate(wins):
            if 35 in cells:
                assert (fx.windows[k][0, w] - fy.windows[k][0, w]).abs().max() > 1e-3
            else:
                assert_close(fx.windows[k][0, w], fy.windows[k][0, w], atol=1e-6)
        # the other image of the batch is untouched
        assert_close(fx.windows[k][1], fy.windows[k][1], atol=1e-6)
    # a batch gives the same windows as its images one by one
    alone = wc.encode(x[1:])
    for k in (2, 3):
        assert_close(alone.windows[k][0], fx.windows[k][1])


def test_fast_transformer_path_matches_open_clip_forward(wc, cache_dir):
    assert wc.encoder.fast_blocks, "the tiny model's blocks should take the fast path"
    generic = WinClip(wc.backbone, cache_dir=cache_dir)
    generic.encoder.fast_blocks = False
    x = random_images(2, seed=6)
    fast = wc.encode(x, windows=True, patch_tokens=True)
    slow = generic.encode(x, windows=True, patch_tokens=True)
    assert_close(fast.embedding, slow.embedding)
    assert_close(fast.patch_tokens, slow.patch_tokens)
    for k in (2, 3):
        assert_close(fast.windows[k], slow.windows[k])
    text = random_text(32)
    refs = random_images(2, seed=7)
    for bank in (None, wc.reference_bank(refs)):
        a = wc.predict(x, text=text, bank=bank)
        b = generic.predict(x, text=text, bank=bank)
        assert_close(a.image_scores, b.image_scores)
        assert_close(a.grid_maps, b.grid_maps)


def test_window_chunking_does_not_change_results(wc):
    x = random_images(3, seed=8)
    # every 3x3 window of the batch in one chunk
    assert wc.encoder.window_token_budget >= 3 * 16 * 10
    whole = wc.encode(x)
    wc.encoder.window_token_budget = 7  # one window per chunk
    chunked = wc.encode(x)
    for k in (2, 3):
        assert_close(chunked.windows[k], whole.windows[k])


# --------------------------------------------------------------------------------------
# Scores and aggregation
# --------------------------------------------------------------------------------------


def test_default_temperature_is_the_models_own(wc):
    scale = float(wc.backbone.clip.logit_scale.exp())
    assert wc.temperature == pytest.approx(1 / scale, rel=1e-6)
    assert wc.temperature == pytest.approx(0.07, rel=1e-4)  # random open_clip init


@pytest.mark.parametrize("tau", [0.07, 0.01, 0.5, 2.0])
def test_p_anomalous_is_a_softmax_with_temperature(tau):
    g = torch.Generator().manual_seed(11)
    f = F.normalize(torch.randn(5, 7, 16, generator=g), dim=-1)
    text = torch.randn(2, 16, generator=g) * 3  # not normalised: cos() must normalise it
    got = p_anomalous(f, text, tau)
    assert got.shape == (5, 7)
    t = as_lists(text)
    expected = [[ref_p_anomalous(row, t, tau) for row in rows] for rows in as_lists(f)]
    assert_close(got, expected)
    assert ((got >= 0) & (got <= 1)).all()


def test_p_anomalous_extremes():
    text = torch.eye(2, 4)
    f = torch.eye(2, 4)
    got = p_anomalous(f, text, 0.07)
    assert got[0] < 1e-6  # looks exactly like the normal prompt
    assert got[1] > 1 - 1e-6


def test_p_anomalous_stays_a_probability_at_a_tiny_temperature():
    """cos/tau overflows fp32 for a tiny tau: a plain softmax gives inf - inf = NaN."""
    text = torch.eye(3, 4)[:2]
    f = F.normalize(
        torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]), dim=-1
    )
    got = p_anomalous(f, text, 1e-6)
    assert torch.equal(got, torch.tensor([0.0, 1.0, 0.5, 0.5]))


@pytest.mark.parametrize(("grid_h", "grid_w", "k"), [(6, 6, 2), (6, 6, 3), (4, 7, 3), (5, 5, 5)])
def test_harmonic_aggregation_matches_loop(grid_h, grid_w, k):
    idx = window_indices(grid_h, grid_w, k)
    g = torch.Generator().manual_seed(k)
    scores = torch.rand(3, idx.shape[0], generator=g) * 0.98 + 0.01
    got = harmonic_aggregate(scores, idx, grid_h * grid_w)
    wins = ref_window_indices(grid_h, grid_w, k)
    expected = [ref_harmonic(row, wins, grid_h * grid_w) for row in as_lists(scores)]
    assert_close(got, expected)


def test_harmonic_aggregation_zero_score_gives_zero_not_nan():
    idx = window_indices(6, 6, 2)
    scores = torch.full((2, idx.shape[0]), 0.4)
    scores[0, 0] = 0.0  # window at the top-left corner: cells 0, 1, 6, 7
    scores[1, 24] = 0.0  # bottom-right window: cells 28, 29, 34, 35
    got = harmonic_aggregate(scores, idx, 36)
    assert torch.isfinite(got).all()
    wins = ref_window_indices(6, 6, 2)
    expected = [ref_harmonic(row, wins, 36) for row in as_lists(scores)]
    assert_close(got, expected)
    assert got[0, [0, 1, 6, 7]].tolist() == [0.0] * 4
    assert got[1, [28, 29, 34, 35]].tolist() == [0.0] * 4
    assert_close(got[0, 2:6], [0.4] * 4)
    # all scores zero: all cells zero
    zero = harmonic_aggregate(torch.zeros(1, idx.shape[0]), idx, 36)
    assert zero.tolist() == [[0.0] * 36]


def test_harmonic_aggregation_constant_scores_give_the_constant():
    idx = window_indices(15, 15, 3)
    got = harmonic_aggregate(torch.full((1, 169), 0.3), idx, 225)
    assert_close(got, torch.full((1, 225), 0.3))


def test_association_matches_loops_over_bank():
    g = torch.Generator().manual_seed(12)
    queries = F.normalize(torch.randn(2, 9, 16, generator=g), dim=-1)
    bank = F.normalize(torch.randn(23, 16, generator=g), dim=-1)
    got = association(queries, bank)
    b = as_lists(bank)
    expected = [[ref_association(q, b) for q in rows] for rows in as_lists(queries)]
    assert_close(got, expected)
    # a query that is in the bank has association 0, never negative
    own = association(bank[:5], bank)
    assert (own >= 0).all()
    assert_close(own, torch.zeros(5), atol=1e-6)


def test_upsample_is_bilinear_without_aligned_corners():
    def ref_upsample(grid: list[list[float]], out_h: int, out_w: int) -> list[list[float]]:
        in_h, in_w = len(grid), len(grid[0])
        out = []
        for i in range(out_h):
            sy = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
            y0 = min(math.floor(sy), in_h - 1)
            y1 = min(y0 + 1, in_h - 1)
            ly = sy - y0
            row = []
            for j in range(out_w):
                sx = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
                x0 = min(math.floor(sx), in_w - 1)
                x1 = min(x0 + 1, in_w - 1)
                lx = sx - x0
                top = grid[y0][x0] * (1 - lx) + grid[y0][x1] * lx
                bottom = grid[y1][x0] * (1 - lx) + grid[y1][x1] * lx
                row.append(top * (1 - ly) + bottom * ly)
            out.append(row)
        return out

    g = torch.Generator().manual_seed(13)
    maps = torch.rand(2, 6, 6, generator=g)
    for size in [(48, 48), (37, 53), (6, 6)]:
        got = upsample(maps, size)
        assert got.shape == (2, *size)
        expected = [ref_upsample(m, *size) for m in as_lists(maps)]
        assert_close(got, expected)


# --------------------------------------------------------------------------------------
# Maps end to end
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [None, 0.5])
def test_zero_shot_prediction_matches_reference(wc, cache_dir, tau):
    model = wc if tau is None else WinClip(wc.backbone, temperature=tau, cache_dir=cache_dir)
    tau_used = 0.07 if tau is None else tau
    assert model.temperature == pytest.approx(tau_used, rel=1e-4)
    x = random_images(2, seed=20)
    text = random_text(32, seed=21)
    out = model.predict(x, text=text, maps=True)
    assert out.image_scores.shape == (2,)
    assert out.grid_maps.shape == (2, 6, 6)
    t = as_lists(text)
    spread = []
    for b in range(2):
        feats = ref_features(wc, x[b])
        s_img, m_zs = ref_predict(wc, feats, t, model.temperature)
        assert_close(out.image_scores[b], s_img)
        assert_close(out.grid_maps[b].reshape(-1), m_zs)
        spread.append(max(m_zs) - min(m_zs))
    assert max(spread) > 1e-3, "maps too flat for a meaningful comparison"
    # the maps-free score is the same s_img
    assert_close(model.predict(x, text=text, maps=False).image_scores, out.image_scores)


def test_zero_shot_with_real_text_embeddings(wc):
    x = random_images(1, seed=22)
    text = wc.text_embeddings("screw")
    out = wc.predict(x, text=text, maps=True)
    feats = ref_features(wc, x[0])
    s_img, m_zs = ref_predict(wc, feats, as_lists(text), wc.temperature)
    assert_close(out.image_scores[0], s_img)
    assert_close(out.grid_maps[0].reshape(-1), m_zs)


def test_reference_bank_holds_hand_built_features(wc):
    refs = random_images(2, seed=30)
    bank = wc.reference_bank(refs, batch_size=1)
    expected = ref_bank(wc, refs)
    assert bank.patch_tokens.shape == (2 * 36, 32)
    assert_close(bank.patch_tokens, expected["patches"])
    assert bank.windows[2].shape == (2 * 25, 32)
    assert bank.windows[3].shape == (2 * 16, 32)
    for k in (2, 3):
        assert_close(bank.windows[k], expected["windows"][k])
    assert bank.num_images == 2


def test_few_shot_prediction_matches_reference(wc):
    refs = random_images(2, seed=31)
    x = random_images(2, seed=32)
    text = random_text(32, seed=33)
    bank = wc.reference_bank(refs)
    out = wc.predict(x, text=text, bank=bank, maps=True)
    assert out.grid_maps.shape == (2, 6, 6)
    hand_bank = ref_bank(wc, refs)
    t = as_lists(text)
    for b in range(2):
        feats = ref_features(wc, x[b])
        score, grid = ref_predict(wc, feats, t, wc.temperature, bank=hand_bank)
        assert_close(out.image_scores[b], score)
        assert_close(out.grid_maps[b].reshape(-1), grid)
    # maps=False with a bank: same WinCLIP+ score, no maps
    no_maps = wc.predict(x, text=text, bank=bank, maps=False)
    assert no_maps.grid_maps is None
    assert_close(no_maps.image_scores, out.image_scores)


def test_few_shot_on_a_reference_image_has_zero_few_shot_map(wc):
    """A reference queried against its own bank: every association is 0, so M = M_zs / 2."""
    refs = random_images(2, seed=34)
    text = random_text(32, seed=35)
    bank = wc.reference_bank(refs)
    few = wc.predict(refs[:1], text=text, bank=bank, maps=True)
    zero = wc.predict(refs[:1], text=text, maps=True)
    assert_close(few.grid_maps, zero.grid_maps / 2, atol=2e-6)
    assert_close(few.image_scores, zero.image_scores / 2, atol=2e-6)


# --------------------------------------------------------------------------------------
# Text side
# --------------------------------------------------------------------------------------


def test_text_embeddings_follow_the_paper_construction(wc, cache_dir):
    assert not (cache_dir / "text").exists() or not any((cache_dir / "text").iterdir())
    tokenizer = open_clip.get_tokenizer(wc.backbone.model_name)
    name = "metal nut"
    rows = []
    for states in (SPEC_NORMAL, SPEC_ANOMALOUS):
        embs = []
        for state in states:
            for template in SPEC_TEMPLATES:
                prompt = template.replace("{}", state.replace("{}", name))
                with torch.no_grad():
                    e = wc.backbone.clip.encode_text(tokenizer([prompt]))[0]
                embs.append(F.normalize(e, dim=-1))
        assert len(embs) == 22 * len(states)
        rows.append(F.normalize(torch.stack(embs).mean(dim=0), dim=-1))
    expected = torch.stack(rows)
    got = wc.text_embeddings("metal_nut")
    assert got.shape == (2, 32)
    assert_close(got, expected)
    assert_close(got.norm(dim=-1), torch.ones(2))
    # the two rows differ (a swap or a single group would be caught above too)
    assert (got[0] - got[1]).abs().max() > 1e-3
    # from the cache: the same numbers
    assert_close(wc.text_embeddings("metal_nut"), expected)


def test_text_embeddings_with_a_custom_prompt_set(wc, cache_dir):
    prompts = PromptSet(
        normal=("good {}",), anomalous=("broken {}", "bad {}"), templates=("{}.", "a {} here")
    )
    custom = WinClip(wc.backbone, prompts=prompts, cache_dir=cache_dir)
    tokenizer = open_clip.get_tokenizer(wc.backbone.model_name)
    groups = [["good screw.", "a good screw here"]]
    groups.append(["broken screw.", "a broken screw here", "bad screw.", "a bad screw here"])
    rows = []
    for group in groups:
        with torch.no_grad():
            embs = [
                F.normalize(wc.backbone.clip.encode_text(tokenizer([p]))[0], dim=-1) for p in group
            ]
        rows.append(F.normalize(torch.stack(embs).mean(dim=0), dim=-1))
    assert_close(custom.text_embeddings("screw"), torch.stack(rows))


# --------------------------------------------------------------------------------------
# Other open_clip ViTs: grid, widths and block type are read from the model
# --------------------------------------------------------------------------------------

VARIANTS = {
    "layer-scale": {"ls_init_value": 0.5},  # fast path with LayerScale
    "custom-block": {"qk_norm": True},  # open_clip's CustomResidualAttentionBlock: generic path
    "non-square": {"image_size": [48, 64]},  # 6 x 8 patch grid
    "no-ln-pre": {"no_ln_pre": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_vit_variants_match_reference(tmp_path, cache_dir, variant):
    import json

    from tests.tiny_model import TINY_CFG

    name = f"winclip-test-{variant}"
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["vision_cfg"].update(VARIANTS[variant])
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(name)
    with torch.no_grad():
        for pname, p in clip.named_parameters():
            if "ln" in pname or pname.endswith("bias") or "gamma" in pname:
                p.add_(0.1 * torch.randn_like(p))
    weights = tmp_path / "w.pt"
    torch.save(clip.state_dict(), weights)
    model = WinClip.load(model=name, weights=weights, cache_dir=cache_dir)
    assert model.encoder.fast_blocks == (variant != "custom-block")
    gh, gw = model.grid_size
    assert (gh * 8, gw * 8) == model.input_size
    for k in (2, 3):
        assert model.windows[k].tolist() == ref_window_indices(gh, gw, k)

    x = random_images(1, size=model.input_size, seed=50)
    refs = random_images(1, size=model.input_size, seed=51)
    text = random_text(32, seed=52)
    feats = model.encode(x, patch_tokens=True)
    ref = ref_features(model, x[0])
    assert_close(feats.embedding[0], ref["embedding"])
    assert_close(feats.patch_tokens[0], ref["patches"])
    for k in (2, 3):
        assert_close(feats.windows[k][0], ref["windows"][k])
    out = model.predict(x, text=text, bank=model.reference_bank(refs), maps=True)
    assert out.grid_maps.shape == (1, gh, gw)
    score, grid = ref_predict(
        model, ref, as_lists(text), model.temperature, bank=ref_bank(model, refs)
    )
    assert_close(out.image_scores[0], score)
    assert_close(out.grid_maps[0].reshape(-1), grid)
