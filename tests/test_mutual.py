"""Mutual scoring (MuSc): the fast code against the slow reference of WINCLIP.md."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from tests import mutual_reference as ref
from winclip_cli import WinClip, mutual

TOL = 1e-5


def images(n: int, seed: int, size: tuple[int, int] = (48, 48)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=generator)


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 5-block tiny ViT on a non-square 6x5 grid: taps 2, 3, 4, 5 (rounded up)."""
    folder = tmp_path_factory.mktemp("deep-model")
    name = "winclip-tiny-vit-5"
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": [48, 40],
            "layers": 5,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(3)
    model = open_clip.create_model(name)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "ln" in key or key.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    torch.save(model.state_dict(), folder / "weights.pt")
    return WinClip.load(model=name, weights=folder / "weights.pt", cache_dir=folder / "cache")


def reference_prediction(wc, x, pool_x=None, skip=None):
    """(image scores, grid maps) of set mode (pool_x None) or pool mode, from the reference."""
    blocks = mutual.tapped_blocks(len(wc.visual.transformer.resblocks))
    embedding, taps = ref.reference_layers(wc, x, blocks)
    pool_taps = ref.reference_layers(wc, pool_x, blocks)[1] if pool_x is not None else None
    per_layer_and_degree = []
    for block in blocks:
        for r in (1, 3, 5):
            z = ref.lnamd(taps[block], wc.grid_size, r)
            if pool_taps is None:
                per_layer_and_degree.append(ref.msm_set(z))
            else:
                pool_z = ref.lnamd(pool_taps[block], wc.grid_size, r)
                per_layer_and_degree.append(ref.msm_pool(z, pool_z, skip))
    maps = ref.grid_maps(per_layer_and_degree, wc.grid_size)
    maxima = [ref.upsampled_max(m, wc.input_size) for m in maps]
    scores = maxima if pool_x is not None else ref.rscin(maxima, embedding)
    return torch.tensor(scores, dtype=torch.float64), maps


# ----- the parts -----------------------------------------------------------------------


def test_tapped_blocks_quarter_the_depth():
    assert mutual.tapped_blocks(12) == (3, 6, 9, 12)  # the reference's layers 2 5 8 11
    assert mutual.tapped_blocks(24) == (6, 12, 18, 24)
    assert mutual.tapped_blocks(5) == (2, 3, 4, 5)
    assert mutual.tapped_blocks(2) == (1, 1, 2, 2)
    assert mutual.tapped_blocks(1) == (1, 1, 1, 1)


@pytest.mark.parametrize(("others", "k"), [(1, 1), (2, 1), (3, 1), (4, 1), (9, 2), (10, 3)])
def test_k_for_small_sets(others, k):
    assert mutual.neighbour_count(others) == k == ref.k_of(others)


def test_k_is_exact_where_floating_point_is_not():
    for others in range(1, 2000):
        assert mutual.neighbour_count(others) == (3 * others) // 10 or others < 4


def test_encoder_taps_match_open_clip_blocks(deep, monkeypatch):
    x = images(3, 0, deep.input_size)
    blocks = (2, 3, 4, 5)
    embedding, taps = ref.reference_layers(deep, x, blocks)
    fast = deep.encoder.encode_layers(x, blocks)
    for block, tokens in zip(blocks, fast.layers, strict=True):
        assert tokens.shape == (3, 30, 32)
        torch.testing.assert_close(tokens.double(), taps[block], atol=TOL, rtol=0)
    torch.testing.assert_close(fast.embedding.double(), embedding, atol=TOL, rtol=0)
    plain = deep.encode(x, windows=False).embedding  # the same pass as scoring's
    torch.testing.assert_close(fast.embedding, plain, atol=TOL, rtol=0)
    monkeypatch.setattr(deep.encoder, "fast_blocks", False)  # open_clip's own blocks
    slow = deep.encoder.encode_layers(x, blocks)
    for a, b in zip(fast.layers, slow.layers, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_encoder_refuses_blocks_outside_the_model(deep):
    with pytest.raises(ValueError, match=r"1\.\.5"):
        deep.encoder.encode_layers(images(1, 0, deep.input_size), (0, 5))


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_reference(r):
    tokens = torch.randn(2, 6 * 5, 16, generator=torch.Generator().manual_seed(r)) * 3 + 1
    fast = mutual.lnamd(tokens, (6, 5), r)
    slow = torch.stack([torch.stack(list(image)) for image in ref.lnamd(tokens, (6, 5), r)])
    torch.testing.assert_close(fast.double(), slow, atol=TOL, rtol=0)


@pytest.mark.parametrize("r", [3, 5])
def test_borders_are_zero_padded(r):
    """A corner's neighbourhood is the in-grid cells only: not replicated, not reflected."""
    grid = torch.zeros(1, 5, 5, 2)  # (B, gh, gw, C)
    grid[0, :, :, 0] = 1.0  # channel 0 everywhere...
    grid[0, 0, 0, 1] = 10.0  # ...channel 1 only at the corner
    corner = mutual.aggregate(grid, r)[0, 0]
    inside = (r // 2 + 1) ** 2  # in-grid cells around the corner
    expected = torch.tensor([inside / (r * r), 10.0 / (r * r)])
    torch.testing.assert_close(corner, expected / expected.norm())
    # replicate padding would count the corner cell r*r - inside more times
    replicated = torch.tensor([1.0, 10.0 * (1 + r * r - inside) / (r * r)])
    assert not torch.allclose(corner, replicated / replicated.norm(), atol=1e-3)


def unit_sets(n: int, length: int, width: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, length, width, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(z, dim=-1)


@pytest.mark.parametrize("n", [2, 3, 5, 11])
def test_set_msm_matches_reference(n):
    z = unit_sets(n, 12, 16, n)
    fast = mutual.set_patch_scores(z, torch.float32)
    slow = ref.msm_set([image.double() for image in z])
    torch.testing.assert_close(fast.double(), slow, atol=TOL, rtol=0)


def test_bf16_msm_errs_by_the_rounding_of_a_dot_product_not_of_the_distance():
    """The bound mutual.py states: at the default model's width the bf16 products err by
    about 2^-9 / sqrt(C) in each squared distance, a small share of distances near 0.5;
    for narrow, nearly identical patches the same error is a large share."""
    for width, spread, most in ((896, 0.5, 5e-3), (64, 0.05, None)):
        base = torch.randn(1, 12, width, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(4, 12, width, generator=torch.Generator().manual_seed(4))
        z = torch.nn.functional.normalize(base + spread * noise, dim=-1)
        slow = ref.msm_set([image.double() for image in z])
        relative = (mutual.set_patch_scores(z, torch.bfloat16).double() - slow).abs() / slow
        if most is not None:
            assert relative.max() < most
        else:
            assert relative.max() > 0.05  # why the tests compare rows at fp32


def test_set_msm_in_small_blocks_is_the_same(monkeypatch):
    """Blocks of 2 images over 7 (a ragged last block) give the unblocked result."""
    z = unit_sets(7, 12, 16, 0)
    whole = mutual.set_patch_scores(z, torch.float32)
    monkeypatch.setattr(mutual, "BLOCK_ROWS", 24)
    assert mutual._images_per_block(12) == 2
    torch.testing.assert_close(mutual.set_patch_scores(z, torch.float32), whole)


def test_pool_msm_skips_the_image_itself_and_matches_reference(monkeypatch):
    pool, queries = unit_sets(6, 12, 16, 1), unit_sets(2, 12, 16, 2)
    queries[1] = pool[4]  # the second query is pool member 4
    _, right = mutual.distance_operands(pool, torch.float32)
    excluded = torch.zeros(2, 6, dtype=torch.bool)
    excluded[1, 4] = True
    monkeypatch.setattr(mutual, "BLOCK_ROWS", 30)  # blocks of pool images
    fast = mutual.pool_patch_scores(queries, right, excluded)
    slow = ref.msm_pool([q.double() for q in queries], [p.double() for p in pool], [set(), {4}])
    torch.testing.assert_close(fast.double(), slow, atol=TOL, rtol=0)
    assert (fast[1] > 0.1).all()  # not the zero distances to itself


def test_nothing_to_compare_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        mutual.set_patch_scores(unit_sets(1, 4, 8, 0), torch.float32)
    pool = unit_sets(1, 4, 8, 0)
    _, right = mutual.distance_operands(pool, torch.float32)
    with pytest.raises(ValueError, match="no image other"):
        mutual.pool_patch_scores(pool, right, torch.ones(1, 1, dtype=torch.bool))


def test_map_maxima_match_reference():
    maps = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    fast = mutual.map_maxima(maps, (48, 40))
    slow = [ref.upsampled_max(m.double(), (48, 40)) for m in maps]
    torch.testing.assert_close(fast.double(), torch.tensor(slow, dtype=torch.float64))


def test_rscin_matches_reference():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator) + 2, dim=1)
    scores = torch.rand(6, generator=generator)
    fast = mutual.rscin(scores, embeddings)
    slow = ref.rscin(scores.tolist(), embeddings.double())
    torch.testing.assert_close(fast.double(), torch.tensor(slow, dtype=torch.float64))


def test_rscin_keeps_the_k_largest_of_each_row():
    """Hand-made similarities: image 0's nearest are 1 (0.9) then 2 (0.5), never 3."""
    w = torch.tensor(
        [[1.0, 0.9, 0.5, 0.1], [0.9, 1.0, 0.6, 0.2], [0.5, 0.6, 1.0, 0.3], [0.1, 0.2, 0.3, 1.0]]
    )
    embeddings = torch.linalg.cholesky(w)  # rows whose dot products are w
    scores = torch.tensor([0.0, 1.0, 0.5, 0.25])  # already min-max normalised
    out = mutual.rscin(scores, embeddings, ks=(1, 2, 3))
    s1 = 0.0
    s2 = (1.0 * 0.0 + 0.9 * 1.0) / 1.9
    s3 = (1.0 * 0.0 + 0.9 * 1.0 + 0.5 * 0.5) / 2.4
    assert out[0].item() == pytest.approx((s1 + s2 + s3) / 3, abs=1e-6)
    # k = 1 keeps only the diagonal: the normalised scores themselves
    torch.testing.assert_close(mutual.rscin(scores, embeddings, ks=(1,)), scores)
    # image 3's second largest is image 2 (0.3), not image 1 (0.2)
    s3_k2 = (1.0 * 0.25 + 0.3 * 0.5) / 1.3
    assert mutual.rscin(scores, embeddings, ks=(2,))[3].item() == pytest.approx(s3_k2, abs=1e-6)


def test_rscin_with_fewer_images_than_k_and_equal_scores():
    embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]]), dim=1)
    out = mutual.rscin(torch.tensor([0.2, 0.7]), embeddings)  # k = 3 > N = 2: all of a row
    slow = ref.rscin([0.2, 0.7], embeddings.double(), ks=(1, 2, 2))
    torch.testing.assert_close(out.double(), torch.tensor(slow, dtype=torch.float64))
    flat = mutual.rscin(torch.tensor([0.4, 0.4]), embeddings)
    assert torch.equal(flat, torch.zeros(2))  # nothing stands out: all 0, not NaN


# ----- predict_mutual on a model ------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "deep"])
def test_set_mode_equals_the_definition(model, request):
    wc = request.getfixturevalue("wc" if model == "tiny" else "deep")
    x = images(6, 10, wc.input_size)
    out = wc.predict_mutual(x, batch_size=4)  # two forward batches, one set
    scores, maps = reference_prediction(wc, x)
    assert out.grid_maps.shape == (6, *wc.grid_size)
    torch.testing.assert_close(out.grid_maps.double(), maps, atol=TOL, rtol=0)
    torch.testing.assert_close(out.image_scores.double(), scores, atol=TOL, rtol=0)


@pytest.mark.parametrize("model", ["tiny", "deep"])
def test_pool_mode_equals_the_definition_and_skips_the_image_itself(model, request):
    wc = request.getfixturevalue("wc" if model == "tiny" else "deep")
    x = images(8, 11, wc.input_size)
    queries, members = x[:3], x[2:8]  # query 2 is pool member 0
    pool = wc.mutual_pool(members, batch_size=4)
    out = wc.predict_mutual(queries, pool)
    scores, maps = reference_prediction(wc, queries, members, skip=[set(), set(), {0}])
    torch.testing.assert_close(out.grid_maps.double(), maps, atol=TOL, rtol=0)
    torch.testing.assert_close(out.image_scores.double(), scores, atol=TOL, rtol=0)


def test_an_image_in_its_own_pool_is_scored_against_the_others(wc):
    x = images(6, 12)
    alone = wc.predict_mutual(x[:1], wc.mutual_pool(x[1:]))
    within = wc.predict_mutual(x[:1], wc.mutual_pool(x))
    torch.testing.assert_close(within.grid_maps, alone.grid_maps, atol=TOL, rtol=0)
    torch.testing.assert_close(within.image_scores, alone.image_scores, atol=TOL, rtol=0)
    assert within.grid_maps.min() > 0.05  # its own zero distances were left out


def test_pool_scores_do_not_depend_on_the_batch(wc):
    x = images(5, 13)
    pool = wc.mutual_pool(images(4, 14))
    together = wc.predict_mutual(x, pool)
    one_by_one = [wc.predict_mutual(x[i : i + 1], pool).image_scores for i in range(5)]
    torch.testing.assert_close(torch.cat(one_by_one), together.image_scores, atol=TOL, rtol=0)


def test_set_mode_needs_two_images_and_pool_mode_needs_another(wc):
    x = images(2, 15)
    with pytest.raises(ValueError, match="at least 2 images"):
        wc.predict_mutual(x[:1])
    with pytest.raises(ValueError, match="no image other"):
        wc.predict_mutual(x[:1], wc.mutual_pool(x[:1]))
    empty = wc.predict_mutual(x[:0])
    assert empty.image_scores.shape == (0,) and empty.grid_maps.shape == (0, *wc.grid_size)
    with pytest.raises(ValueError, match="expects"):
        wc.predict_mutual(torch.zeros(2, 3, 8, 8))


def test_bf16_stays_close_to_fp32(tiny, cache_dir):
    x = images(6, 16)
    fp32 = WinClip.load(model=tiny["name"], weights=tiny["weights"], cache_dir=cache_dir)
    bf16 = WinClip.load(
        model=tiny["name"], weights=tiny["weights"], cache_dir=cache_dir, precision="bf16"
    )
    assert bf16.mutual.matmul_dtype == torch.bfloat16
    a, b = fp32.predict_mutual(x), bf16.predict_mutual(x)
    # maps within a bf16 rounding or two (set scores are min-max stretched: not compared)
    assert (a.grid_maps - b.grid_maps).abs().max() < 0.01


@pytest.mark.parametrize(
    ("count", "most", "sizes"),
    [(0, 200, []), (5, 200, [5]), (200, 200, [200]), (201, 200, [100, 101]), (7, 3, [2, 2, 3])],
)
def test_sets_split_in_input_order_and_evenly(count, most, sizes):
    sets = mutual.split_sets(count, most)
    assert [len(s) for s in sets] == sizes
    assert [i for s in sets for i in s] == list(range(count))
    with pytest.raises(ValueError, match="at least 2"):
        mutual.split_sets(10, 1)
