"""The SCALE model: padding/missing masks, self-harmonized weights, SDPA vs naive attention."""

from __future__ import annotations

import copy

import pytest
import torch

from scalemm.fuse.attention import Block, Transformer, naive_attention
from scalemm.fuse.model import ScaleModel, SelfHarmonizer, product_embedding
from fuse_helpers import SMALL_SHAPES, random_batch, tiny_config

torch.set_num_threads(1)


def _model(**kw) -> ScaleModel:
    torch.manual_seed(0)
    m = ScaleModel(tiny_config(**kw), SMALL_SHAPES)
    return m.eval()


def _outputs(model: ScaleModel, batch, masks=None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(batch, masks)
    res = {"pooled": out.pooled, "enc": out.enc_pooled, "W": out.weights, "emb": product_embedding(out)}
    for m, (pred, rows, cols) in out.masked.items():
        res[f"pred_{m}"] = pred
    return res


PRESENCE = {"image": [True, False, True, True], "text": [True, True, False, True],
            "table": [True, True, True, False], "video": [False, True, True, True],
            "audio": [True, False, False, True]}


def test_missing_modality_features_never_change_outputs() -> None:
    model = _model()
    batch = random_batch(4, present=PRESENCE, seed=1)
    masks = {m: batch["mask"][m] & (torch.rand(batch["mask"][m].shape) < 0.3) for m in SMALL_SHAPES}
    ref = _outputs(model, batch, masks)
    changed = copy.deepcopy(batch)
    # item 1 lacks image: give it wild features (and valid-looking mask bits) anyway
    changed["tokens"]["image"][1] = torch.randn_like(changed["tokens"]["image"][1]) * 100
    changed["mask"]["image"][1] = True
    changed["tokens"]["video"][0] = 50.0
    new = _outputs(model, changed, masks)
    for k in ref:
        assert torch.allclose(ref[k], new[k], atol=1e-6), k


def test_padded_tokens_never_change_outputs() -> None:
    model = _model()
    batch = random_batch(4, present=PRESENCE, seed=2)
    ref = _outputs(model, batch)
    changed = copy.deepcopy(batch)
    for m in SMALL_SHAPES:
        pad = ~changed["mask"][m]
        changed["tokens"][m][pad] = torch.randn(int(pad.sum()), SMALL_SHAPES[m][1]) * 30
    new = _outputs(model, changed)
    for k in ref:
        assert torch.allclose(ref[k], new[k], atol=1e-6), k
    # and a present token does matter (the test can fail)
    changed["tokens"]["text"][0, 0] += torch.randn(SMALL_SHAPES["text"][1])
    assert not torch.allclose(ref["pooled"][0], _outputs(model, changed)["pooled"][0], atol=1e-4)


def test_missing_modality_outputs_are_zero_and_absent_batch_key_equals_masked() -> None:
    model = _model()
    batch = random_batch(4, present=PRESENCE, seed=3)
    out = _outputs(model, batch)
    absent = ~torch.stack([batch["present"][m] for m in model.modalities], 1)
    assert (out["pooled"][absent] == 0).all()
    # leaving a modality out of the batch == marking it absent for every item
    sub = copy.deepcopy(batch)
    for k in ("tokens", "mask", "present", "entities"):
        sub[k].pop("audio", None)
    marked = copy.deepcopy(batch)
    marked["present"]["audio"][:] = False
    a, b = _outputs(model, sub), _outputs(model, marked)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_harmonized_weights_properties() -> None:
    model = _model()
    # item 2: only one modality; item 3: none at all
    pres = {m: [True, True, m == "text", False] for m in SMALL_SHAPES}
    pres["video"][0] = False
    batch = random_batch(4, present=pres, seed=4)
    with torch.no_grad():
        out = model(batch)
    W, imp, P = out.weights, out.importances, out.present
    assert torch.isfinite(W).all() and torch.isfinite(imp).all() and torch.isfinite(out.pooled).all()
    pair = P[:, :, None] & P[:, None, :]
    assert (W[~pair] == 0).all()
    norms = W.norm(dim=-1)
    assert torch.allclose(norms[P], torch.ones_like(norms[P]), atol=1e-5)
    assert (norms[~P] == 0).all()
    assert ((imp >= 0) & (imp <= 1 + 1e-6)).all()
    assert (imp[~P] == 0).all()
    assert torch.allclose(imp[2, 1], torch.tensor(1.0))  # a lone modality is all of its row
    assert (W[3] == 0).all() and (product_embedding(out)[3] == 0).all()
    # uniform mode: W = 1 on present pairs
    uni = _model(harmonize=False)
    with torch.no_grad():
        u = uni(batch)
    assert torch.equal(u.weights, pair.float()) and torch.equal(u.importances, P.float())


def test_harmonizer_matches_definition_and_gradients_are_finite() -> None:
    torch.manual_seed(0)
    h = SelfHarmonizer(8)
    pooled = torch.randn(3, 4, 8, requires_grad=True)
    present = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    W, imp = h(pooled, present)
    # item 0 by the book, on its present modalities only
    idx = torch.tensor([0, 1, 3])
    f = torch.relu(h.proj(pooled[0, idx]))
    f = f / f.norm(dim=-1, keepdim=True)
    S = f @ f.T
    S2 = S * S.softmax(dim=-1)
    ref = S2 / S2.norm(dim=-1, keepdim=True)
    assert torch.allclose(W[0][idx][:, idx], ref, atol=1e-5)
    (W.sum() + imp.sum()).backward()
    assert torch.isfinite(pooled.grad).all()


def _identity_harmonizer(agreement: str) -> SelfHarmonizer:
    h = SelfHarmonizer(4, importance="agreement", n_modalities=4, agreement=agreement)
    with torch.no_grad():  # f = ReLU(x): S is the cosine of the (non-negative) inputs themselves
        h.proj.weight.copy_(torch.eye(4))
        h.proj.bias.zero_()
    return h


def test_corroborated_agreement_leaves_out_the_closest_modality() -> None:
    """A picture and its near-copy (the video) agree with each other best; a title agrees less
    with each, more evenly. The mean agreement ranks the near-copies above the title; leaving each
    modality's closest other modality out ranks the title first."""
    image, title, table, video = [1, 0, 0, .3], [.7, .2, .7, .1], [0, 1, 0, .3], [1, .05, 0, .3]
    x = torch.tensor([[image, title, table, video]])
    full = torch.ones(1, 4, dtype=torch.bool)
    fn = torch.nn.functional.normalize(x[0], dim=-1)
    S = fn @ fn.T
    _, mean = _identity_harmonizer("mean")(x, full)
    _, corr = _identity_harmonizer("corroborated")(x, full)
    for m in range(4):
        others = [S[m, n] for n in range(4) if n != m]
        assert torch.isclose(mean[0, m], sum(others) / 3, atol=1e-5)
        assert torch.isclose(corr[0, m], (sum(others) - max(others)) / 2, atol=1e-5)
    assert mean[0, 0] > mean[0, 1] and mean[0, 3] > mean[0, 1]  # the near-copies first
    assert corr[0, 1] > corr[0, 0] and corr[0, 1] > corr[0, 3]  # the title first
    # with one other modality present nothing is left out; a lone modality weighs 1
    two = torch.tensor([[True, True, False, False]])
    one = torch.tensor([[False, False, True, False]])
    assert torch.allclose(_identity_harmonizer("corroborated")(x, two)[1], _identity_harmonizer("mean")(x, two)[1])
    assert torch.equal(_identity_harmonizer("corroborated")(x, one)[1], one.float())


def test_running_mean_importance_and_shrinkage_outside_training() -> None:
    """In training the harmonizer keeps each modality's running mean importance (first batch sets
    it, then exponential, absent modalities untouched); outside training a product's importance
    moves towards that mean by n / (n + k), n = the modalities its agreement rests on."""
    torch.manual_seed(0)
    k = 3.0
    h = SelfHarmonizer(4, importance="agreement", n_modalities=4, agreement="corroborated", shrink=k)
    plain = SelfHarmonizer(4, importance="agreement", n_modalities=4, agreement="corroborated")
    plain.load_state_dict({n: v for n, v in h.state_dict().items() if not n.startswith("importance_")})
    x1, x2 = torch.rand(6, 4, 4), torch.rand(6, 4, 4)
    p1 = torch.ones(6, 4, dtype=torch.bool)
    p2 = p1.clone()
    p2[:, 3] = False  # modality 3 absent from the whole second batch
    p2[0, 2] = False
    assert "importance_mean" not in plain.state_dict() and "importance_mean" in h.state_dict()
    with torch.no_grad():
        _, before = h.eval()(x1, p1)  # no mean kept yet: nothing to shrink towards
        assert torch.equal(before, plain.eval()(x1, p1)[1])
        h.train()
        _, i1 = h(x1, p1)
        h.update_mean(i1, p1)
        assert torch.allclose(h.importance_mean, i1.mean(0))
        _, i2 = h(x2, p2)
        h.update_mean(i2, p2)
    m2 = torch.stack([i2[p2[:, j], j].mean() if p2[:, j].any() else torch.tensor(0.) for j in range(4)])
    expect = 0.9 * i1.mean(0) + 0.1 * m2
    expect[3] = i1.mean(0)[3]
    assert torch.allclose(h.importance_mean, expect, atol=1e-6)
    assert h.importance_updates.tolist() == [2, 2, 2, 1]

    h.eval()
    mean = h.importance_mean
    x = torch.rand(3, 4, 4)
    pres = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        _, raw = plain(x, pres)
        _, shrunk = h(x, pres)
    n = torch.tensor([[2.0], [1.0], [0.0]])  # corroborated: 3 others -> 2; 1 other -> 1; alone -> 0
    assert torch.allclose(shrunk, torch.where(pres, mean + n / (n + k) * (raw - mean), torch.zeros(())), atol=1e-6)
    # the fewer modalities an agreement rests on, the closer to the mean
    assert ((shrunk[1, :2] - mean[:2]).abs() <= (raw[1, :2] - mean[:2]).abs() * (1 / (1 + k)) + 1e-6).all()
    # training-time importances are never shrunk (the losses see the product's own agreement)
    with torch.no_grad():
        assert torch.equal(h.train()(x, pres)[1], plain.train()(x, pres)[1])


def test_identification_rate_finds_the_modality_that_tells_products_apart() -> None:
    """Over a training batch each modality's rate is the share of products whose output of it is
    closest to their own rest (the weighted sum of their other modalities) among the batch's; a
    modality that is the same for every product (a template) identifies almost none, and outside
    training importances are scaled by (rate / best rate) ** p."""
    B, p = 8, 0.5
    h = SelfHarmonizer(10, importance="agreement", n_modalities=3, identification=p)
    eye = torch.eye(10)
    pooled = torch.stack([eye[:B], eye[:B], eye[9].expand(B, 10)], 1)  # two telling modalities, one template
    present = torch.ones(B, 3, dtype=torch.bool)
    with torch.no_grad():
        xb = torch.rand(B, 3, 10)
        _, before = h.eval()(xb, present)  # no rate kept yet: nothing to scale by
        h.update_identification(pooled, torch.ones(B, 3), present)
    # the template ties with every rest: argmax picks the first product, its own only for product 0
    assert torch.allclose(h.identification_rate, torch.tensor([1.0, 1.0, 1 / B]))
    off = torch.tensor([[True, True, True], [True, False, False]])  # a product alone: counts nowhere
    with torch.no_grad():
        h.update_identification(pooled[:2], torch.ones(2, 3), off)
    assert torch.allclose(h.identification_rate, torch.tensor([1.0, 1.0, 0.9 / B + 0.1]))
    assert h.identification_updates.tolist() == [2, 2, 2]
    x = torch.rand(4, 3, 10)
    plain = SelfHarmonizer(10, importance="agreement", n_modalities=3)
    plain.load_state_dict({n: v for n, v in h.state_dict().items() if not n.startswith("identification_")})
    with torch.no_grad():
        _, raw = plain.eval()(x, torch.ones(4, 3, dtype=torch.bool))
        _, scaled = h.eval()(x, torch.ones(4, 3, dtype=torch.bool))
        assert torch.equal(h.train()(x, torch.ones(4, 3, dtype=torch.bool))[1], raw)  # never in training
    rate = h.identification_rate
    assert torch.allclose(scaled, raw * (rate / rate.max()) ** p, atol=1e-6)
    assert torch.allclose(scaled[:, :2], raw[:, :2]) and (scaled[:, 2] < 0.5 * raw[:, 2]).all()
    with torch.no_grad():
        assert torch.equal(before, plain.eval()(xb, present)[1])


def test_only_full_training_passes_update_the_running_statistics() -> None:
    """The model folds the full products of a training batch into the running mean; evaluation
    passes and subset passes (ablations) leave it alone, and uniform weights keep none."""
    batch = random_batch(present=PRESENCE)
    model = _model()
    assert model.harmonizer.shrink > 0
    with torch.no_grad():
        model(batch)  # eval mode
        assert model.harmonizer.importance_updates.sum() == 0
        model.train()
        enc = model.encode(batch)
        model.fuse(enc, enc.present & torch.tensor([True, True, False, False, False]))  # a subset
        assert model.harmonizer.importance_updates.sum() == 0
        out = model.fuse(enc)
    assert model.harmonizer.importance_updates.tolist() == [1.0] * 5
    present = out.present.float()
    assert torch.allclose(model.harmonizer.importance_mean, (out.importances * present).sum(0) / present.sum(0))
    assert model.harmonizer.identification_updates.tolist() == [1.0] * 5  # the same passes only
    assert 0 <= model.harmonizer.identification_rate.min() and model.harmonizer.identification_rate.max() <= 1
    uniform = _model(harmonize=False).state_dict()
    assert "harmonizer.importance_mean" not in uniform and "harmonizer.identification_rate" not in uniform


def test_embedding_width_follows_the_weighting() -> None:
    batch = random_batch(4, present=PRESENCE, seed=2)
    frozen = sum(d for _, d in SMALL_SHAPES.values())  # the token widths
    for weighting, bw, fw, blocks in (("importance", 0.0, 0.0, 1), ("sum", 0.0, 0.0, 1),
                                      ("importance_concat", 0.0, 0.0, 5), ("importance", 0.35, 0.0, 6),
                                      ("importance", 0.35, 0.1, 6), ("sum", 0.0, 0.1, 1)):
        model = _model(embed_weighting=weighting, block_weight=bw, frozen_blocks=fw)
        with torch.no_grad():
            out = model(batch)
            emb = model.with_frozen_blocks(product_embedding(out, "encoder", weighting, bw),
                                           model.frozen_vectors(batch), out.present, out.importances)
        assert model.embedding_dim == model.cfg.d_model * blocks + (frozen if fw else 0) == emb.shape[1]
        assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)


def test_frozen_blocks_carry_the_token_means_weighed_by_importance() -> None:
    """With ``frozen_blocks`` f the learned embedding is followed by each modality's frozen vector
    (the mean of its valid tokens), normalised and scaled by sqrt(its importance share): the
    cosine of two products is (cos_learned + f^2 cos_frozen) / (1 + f^2); an absent modality's
    block is zero, and a modality with the larger importance has the longer block."""
    batch = random_batch(4, present=PRESENCE, seed=3)
    model = _model(frozen_blocks=0.5)
    with torch.no_grad():
        out = model(batch)
        learned = product_embedding(out, "encoder", "importance", model.cfg.block_weight)
        emb = model.with_frozen_blocks(learned, model.frozen_vectors(batch), out.present, out.importances)
    width = learned.shape[1]
    assert torch.allclose(emb[:, :width] * (1 + 0.25) ** 0.5, learned, atol=1e-5)
    frozen = emb[:, width:] * (1 + 0.25) ** 0.5 / 0.5
    assert torch.allclose(frozen.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    w = torch.where(out.present, out.importances, torch.zeros(()))
    w = w / w.sum(1, keepdim=True)
    start = 0
    for j, m in enumerate(model.modalities):
        d = SMALL_SHAPES[m][1]
        block = frozen[:, start:start + d]
        start += d
        valid = batch["mask"][m]
        mean = (batch["tokens"][m] * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
        for i in range(len(emb)):
            if not out.present[i, j]:
                assert (block[i] == 0).all()
                continue
            # the shares w sum to 1, so block m's length is sqrt(w_m) and the blocks' total is 1
            assert torch.allclose(block[i].norm(), torch.sqrt(w[i, j]), atol=1e-5)
            assert torch.allclose(block[i] / block[i].norm(), mean[i] / mean[i].norm(), atol=1e-4)
    assert start == frozen.shape[1]
    # the cosines mix by the weight
    assert torch.allclose(emb @ emb.T, (learned @ learned.T + 0.25 * (frozen @ frozen.T)) / 1.25, atol=1e-5)
    # weight 0 is the learned embedding itself
    plain = _model(frozen_blocks=0.0)
    assert plain.frozen_vectors(batch) is None
    assert plain.with_frozen_blocks(learned, model.frozen_vectors(batch), out.present, out.importances) is learned


def test_blocks_beside_the_sum_mix_the_two_cosines_by_their_weight() -> None:
    """The embedding with ``block_weight`` a: its first d_model columns are the summed embedding, the
    rest the side-by-side one, and the cosine of two products is (cos_sum + a^2 cos_blocks) / (1 + a^2)."""
    batch = random_batch(4, present=PRESENCE, seed=2)
    model = _model(block_weight=0.5)
    with torch.no_grad():
        out = model(batch)
        both = product_embedding(out, "encoder", "importance", 0.5)
        s = product_embedding(out, "encoder", "importance")
        b = product_embedding(out, "encoder", "importance_concat")
    d = model.cfg.d_model
    assert torch.allclose(both[:, :d] * (1 + 0.25) ** 0.5, s, atol=1e-5)
    assert torch.allclose(both[:, d:] * (1 + 0.25) ** 0.5, b * 0.5, atol=1e-5)
    assert torch.allclose(both @ both.T, (s @ s.T + 0.25 * (b @ b.T)) / 1.25, atol=1e-5)
    # a modality the product lacks has a zero block
    absent = ~out.present
    blocks = both[:, d:].reshape(len(both), len(model.modalities), d)
    assert (blocks[absent] == 0).all() and (blocks[out.present].norm(dim=-1) > 0).all()


@pytest.mark.parametrize("kw, match", [({"frozen_blocks": -0.1}, "frozen_blocks must be"),
                                       ({"frozen_blocks": float("inf")}, "frozen_blocks must be"),
                                       ({"block_weight": -0.1}, "block_weight must be"),
                                       ({"block_weight": float("nan")}, "block_weight must be"),
                                       ({"embed_weighting": "sum"}, "needs embed_weighting 'importance'")])
def test_block_weight_is_checked(kw, match) -> None:
    from scalemm.fuse.config import ConfigError, ScaleConfig
    with pytest.raises(ConfigError, match=match):
        ScaleConfig(**{"block_weight": 0.35, **kw})


def test_block_sdpa_equals_naive_reference() -> None:
    torch.manual_seed(0)
    blk = Block(32, 4, dropout=0.0).eval()
    x = torch.randn(3, 7, 32)
    key = torch.rand(3, 7) > 0.4
    key[:, 0] = True
    with torch.no_grad():
        a = blk(x, key, "sdpa")
        b = blk(x, key, "naive")
    assert torch.allclose(a, b, atol=1e-5)
    q, k, v = torch.randn(3, 3, 2, 7, 8).unbind(0)
    m = key[:, None, None, :]
    assert torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m),
                          naive_attention(q, k, v, m), atol=1e-5)


def test_training_mode_keeps_the_fused_cpu_kernel_and_attn_dropout_drops() -> None:
    """The default (attn_dropout 0) trains through SDPA's fused kernel, not the math fallback;
    attn_dropout > 0 really drops attention probabilities in training, and only there."""
    from scalemm.bench.fuse import sdpa_kernels

    kernels = sdpa_kernels(batch=2, length=24, d_model=32, heads=4, train=True)
    assert any("flash_attention" in k for k in kernels), kernels
    assert not any("attention_math" in k for k in kernels), kernels
    assert any("attention_math" in k for k in sdpa_kernels(batch=2, length=24, d_model=32, heads=4,
                                                            attn_dropout=0.5))
    torch.manual_seed(0)
    blk = Block(32, 4, dropout=0.0, attn_dropout=0.5)
    x, key = torch.randn(2, 6, 32), torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        t1, t2 = blk(x, key), blk(x, key)
        blk.eval()
        e1, e2 = blk(x, key), blk(x, key, "naive")
    assert not torch.allclose(t1, t2) and torch.allclose(e1, e2, atol=1e-5)


def test_model_sdpa_equals_naive_with_padding_and_missing() -> None:
    model = _model()
    batch = random_batch(4, present=PRESENCE, seed=5)
    masks = {m: batch["mask"][m] & (torch.rand(batch["mask"][m].shape) < 0.3) for m in SMALL_SHAPES}
    a = _outputs(model, batch, masks)
    model.set_attention("naive")
    b = _outputs(model, batch, masks)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    with pytest.raises(ValueError):
        Transformer(32, 4, 1).blocks[0](torch.randn(1, 2, 32), None, "fast")


def test_wrong_token_shape_is_refused() -> None:
    model = _model()
    batch = random_batch(2, shapes={**SMALL_SHAPES, "audio": (5, 9)})
    with pytest.raises(ValueError, match="do not fit"):
        model(batch)


def test_attention_benchmark_times_both_paths() -> None:
    from scalemm.bench.fuse import attention_benchmark

    r = attention_benchmark(batch=2, length=9, d_model=16, heads=2, layers=1, repeats=1)
    assert r["sdpa_s"] > 0 and r["naive_s"] > 0
    assert r["naive_over_sdpa"] == pytest.approx(r["naive_s"] / r["sdpa_s"])
