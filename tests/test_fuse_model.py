"""The SCALE model: padding/missing masks, self-harmonized weights, SDPA vs naive attention."""

from __future__ import annotations

import copy

import pytest
import torch

from scalemm.fuse.attention import Block, Transformer, naive_attention
from scalemm.fuse.config import EmbedSettings
from scalemm.fuse.model import ScaleModel, SelfHarmonizer, product_embedding
from fuse_helpers import SMALL_SHAPES, random_batch, tiny_config

torch.set_num_threads(1)


def _model(**kw) -> ScaleModel:
    torch.manual_seed(0)
    m = ScaleModel(tiny_config(**kw), SMALL_SHAPES)
    return m.eval()


# the paper's embedding: the plain sum of the fused pooled outputs (every part of the model shows in it)
FUSED_SUM = EmbedSettings(source="fusion", weighting="sum")


def _outputs(model: ScaleModel, batch, masks=None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(batch, masks)
    res = {"pooled": out.pooled, "enc": out.enc_pooled, "W": out.weights, "emb": product_embedding(out, FUSED_SUM)}
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
    assert (W[3] == 0).all() and (product_embedding(out, FUSED_SUM)[3] == 0).all()
    # uniform mode: W = 1 on present pairs
    uni = _model(harmonize=False)
    with torch.no_grad():
        u = uni(batch)
    assert torch.equal(u.weights, pair.float()) and torch.equal(u.importances, P.float())


def test_harmonizer_matches_definition_and_gradients_are_finite() -> None:
    torch.manual_seed(0)
    h = SelfHarmonizer(8, n_modalities=4)
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


def _identity_harmonizer(**kw) -> SelfHarmonizer:
    h = SelfHarmonizer(4, importance="gated", n_modalities=4, **kw)
    with torch.no_grad():  # f = ReLU(x): S is the cosine of the (non-negative) inputs themselves
        h.proj.weight.copy_(torch.eye(4))
        h.proj.bias.zero_()
    return h


def _gate(h: SelfHarmonizer, m: int, agreement: torch.Tensor) -> torch.Tensor:
    """The gated importance of modality m for an agreement: sigmoid(a softplus(s_m) + b_m)."""
    return torch.sigmoid(agreement * torch.nn.functional.softplus(h.gate_scale[m]) + h.gate_bias[m])


def test_corroborated_agreement_leaves_out_the_closest_modality() -> None:
    """A picture and its near-copy (the video) agree with each other best; a title agrees less
    with each, more evenly. The mean agreement ranks the near-copies above the title; the gated
    importance rests on each modality's agreement with its closest other modality left out, which
    ranks the title first."""
    image, title, table, video = [1, 0, 0, .3], [.7, .2, .7, .1], [0, 1, 0, .3], [1, .05, 0, .3]
    x = torch.tensor([[image, title, table, video]])
    full = torch.ones(1, 4, dtype=torch.bool)
    fn = torch.nn.functional.normalize(x[0], dim=-1)
    S = fn @ fn.T
    h = _identity_harmonizer()
    with torch.no_grad():
        _, imp = h(x, full)
        mean, corr = torch.zeros(4), torch.zeros(4)
        for m in range(4):
            others = [S[m, n] for n in range(4) if n != m]
            mean[m], corr[m] = sum(others) / 3, (sum(others) - max(others)) / 2
            assert torch.isclose(imp[0, m], _gate(h, m, corr[m]), atol=1e-5)
            assert not torch.isclose(imp[0, m], _gate(h, m, mean[m]), atol=1e-4)  # not the plain mean
    assert mean[0] > mean[1] and mean[3] > mean[1]  # the plain mean: the near-copies first
    assert imp[0, 1] > imp[0, 0] and imp[0, 1] > imp[0, 3]  # corroborated: the title first
    # with one other modality present nothing is left out; a lone modality weighs 1
    two = torch.tensor([[True, True, False, False]])
    one = torch.tensor([[False, False, True, False]])
    with torch.no_grad():
        pair = h(x, two)[1]
        assert torch.allclose(pair[0, :2], torch.stack([_gate(h, 0, S[0, 1]), _gate(h, 1, S[0, 1])]), atol=1e-5)
        assert (pair[0, 2:] == 0).all()
        assert torch.equal(h(x, one)[1], one.float())


def test_identification_rate_finds_the_modality_that_tells_products_apart() -> None:
    """Over a training batch each modality's rate is the share of products whose output of it is
    closest to their own rest (the weighted sum of their other modalities) among the batch's; a
    modality that is the same for every product (a template) identifies almost none, and outside
    training importances are scaled by (rate / best rate) ** p."""
    B, p = 8, 0.5
    h = SelfHarmonizer(10, importance="gated", n_modalities=3, identification=p)
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
    plain = SelfHarmonizer(10, importance="gated", n_modalities=3)
    plain.load_state_dict(h.state_dict())  # the same weights and rates: power 0 leaves the rates unused
    with torch.no_grad():
        _, raw = plain.eval()(x, torch.ones(4, 3, dtype=torch.bool))
        _, scaled = h.eval()(x, torch.ones(4, 3, dtype=torch.bool))
        assert torch.equal(h.train()(x, torch.ones(4, 3, dtype=torch.bool))[1], raw)  # never in training
    rate = h.identification_rate
    factor = (rate / rate.max()) ** p
    with torch.no_grad():  # by the definition: two others each, none left out, witnesses weighed by factor ** 2
        f = torch.nn.functional.normalize(torch.relu(h.proj(x)), dim=-1)
        S = f @ f.transpose(1, 2)
        for m in range(3):
            n = [k for k in range(3) if k != m]
            w = factor[n] ** 2
            agree = (S[:, m, n] * w).sum(-1) / w.sum()
            assert torch.allclose(scaled[:, m], _gate(h, m, agree) * factor[m], atol=1e-6)
            # the plain importance: the closest of the two others left out, the factor unused
            assert torch.allclose(raw[:, m], _gate(h, m, S[:, m, n].min(-1).values), atol=1e-6)
    assert (scaled[:, 2] < raw[:, 2]).all()  # the template weighs less
    with torch.no_grad():
        assert torch.equal(before, plain.eval()(xb, present)[1])


def test_a_weak_witness_does_not_move_the_importance_of_the_others_outside_training() -> None:
    """A title beside a picture and a shop's table: under the plain rule (training) the title's
    agreement leaves out the closest other, the picture, and rests on the table alone, so adding
    the table moves the title's importance; outside training the witnesses are weighed by their
    identification factor squared and the closest is left out only among three or more others, so a
    table that identifies little leaves it almost where it was without the table."""
    image, title, table, video = [1, 0, 0, .3], [.7, .2, .7, .1], [0, 1, 0, .3], [1, .05, 0, .3]
    x = torch.tensor([[image, title, table, video]])
    h = _identity_harmonizer(identification=2.0)
    with torch.no_grad():
        h.identification_rate.copy_(torch.tensor([0.9, 0.8, 0.1, 0.7]))
        h.identification_updates.fill_(5)
    factor = (h.identification_rate / 0.9) ** 2
    two = torch.tensor([[True, True, False, False]])
    three = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        trained_two, trained_three = h.train()(x, two)[1], h.train()(x, three)[1]
        eval_two, eval_three = h.eval()(x, two)[1], h.eval()(x, three)[1]
        full = h.eval()(x, torch.ones(1, 4, dtype=torch.bool))[1]
    # the plain rule: the table moves the title's importance by a lot
    assert abs(float(trained_three[0, 1] - trained_two[0, 1])) > 0.1
    # witnesses by their identification: it barely moves
    assert abs(float(eval_three[0, 1] - eval_two[0, 1])) < 0.01
    assert torch.allclose(eval_two[0, 1], trained_two[0, 1] * factor[1], atol=1e-6)
    # three others: the closest is left out, the other two weighed by factor ** 2
    fn = torch.nn.functional.normalize(x[0], dim=-1)
    S = fn @ fn.T
    for m in range(4):
        others = [n for n in range(4) if n != m]
        kept = [n for n in others if n != max(others, key=lambda n: float(S[m, n]))]
        w = factor[kept] ** 2
        agree = (S[m, kept] * w).sum() / w.sum()
        assert torch.isclose(full[0, m], _gate(h, m, agree) * factor[m], atol=1e-5), m


def test_only_full_training_passes_update_the_running_statistics() -> None:
    """The model folds the full products of a training batch into the running identification
    rates; evaluation passes and subset passes (ablations) leave them alone, and uniform weights
    (harmonize: false) and the diagonal importance update nothing."""
    batch = random_batch(present=PRESENCE)
    model = _model()
    assert model.harmonizer.identification > 0
    with torch.no_grad():
        model(batch)  # eval mode
        assert model.harmonizer.identification_updates.sum() == 0
        model.train()
        enc = model.encode(batch)
        model.fuse(enc, enc.present & torch.tensor([True, True, False, False, False]))  # a subset
        assert model.harmonizer.identification_updates.sum() == 0
        model.fuse(enc)
    assert model.harmonizer.identification_updates.tolist() == [1.0] * 5  # the full pass only
    assert 0 <= model.harmonizer.identification_rate.min() and model.harmonizer.identification_rate.max() <= 1
    for kw in ({"harmonize": False}, {"importance": "diagonal"}):
        other = _model(**kw).train()
        with torch.no_grad():
            other(batch)
        for name in SelfHarmonizer.RUNNING:  # registered (a checkpoint has them), never updated
            assert (getattr(other.harmonizer, name) == 0).all(), (kw, name)


def test_embedding_is_d_model_wide_under_every_setting() -> None:
    """The product embedding is d_model wide and unit length whatever its source and weighting,
    and the model embeds with the settings it was given (set_embedding changes them)."""
    batch = random_batch(4, present=PRESENCE, seed=2)
    embs = {}
    for source in ("encoder", "fusion"):
        for weighting in ("importance", "sum"):
            model = _model(source=source, weighting=weighting)
            assert model.embedding == EmbedSettings(source=source, weighting=weighting, modality_heads=[])
            with torch.no_grad():
                out = model(batch)
                emb = product_embedding(out, model.embedding)
            assert model.embedding_dim == model.cfg.d_model == emb.shape[1]
            assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
            embs[source, weighting] = emb
    for a in embs:  # every setting gives another embedding
        for b in embs:
            assert a == b or not torch.allclose(embs[a], embs[b], atol=1e-4), (a, b)
    model = _model()
    model.set_embedding(EmbedSettings(identification_power=0.5))
    assert model.harmonizer.identification == 0.5
    uniform = _model(harmonize=False)  # no harmonizing: no importance correction
    assert uniform.harmonizer.identification == 0.0


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
    """The model's blocks (ATTN_DROPOUT 0) train through SDPA's fused kernel, not the math fallback;
    a block's attn_dropout > 0 really drops attention probabilities in training, and only there."""
    from scalemm.bench.fuse import sdpa_kernels
    from scalemm.fuse.model import ATTN_DROPOUT

    assert ATTN_DROPOUT == 0
    assert all(b.attn_dropout == ATTN_DROPOUT for b in _model().modules() if isinstance(b, Block))

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


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
def test_first_only_is_the_first_position_of_the_whole_pass(impl) -> None:
    """Embedding reads each modality's first token alone: the last block computes that one query
    (every key still), which must give the full pass's first position, padding masked or not."""
    torch.manual_seed(0)
    x = torch.randn(5, 9, 32)
    key = torch.rand(5, 9) > 0.4
    key[3] = False  # a row with no valid key (ensure_one_key switches position 0 on)
    for layers in (0, 1, 2):
        tr = Transformer(32, 4, layers).eval()
        tr.impl = impl
        with torch.no_grad():
            for mask in (key, None):
                full, first = tr(x, mask), tr(x, mask, first_only=True)
                assert first.shape == (5, 1, 32)
                assert torch.allclose(first, full[:, :1], atol=1e-5), (layers, mask is None)


def test_model_encodes_first_tokens_alone_without_a_joint_transformer() -> None:
    """Without a joint transformer (fusion_layers 0) the embedding's every output (the encoders'
    and the fused first tokens, the importances, every variant of fuse.variants) comes from the
    first tokens alone, with or without the frozen skip; with one, the shortcut is refused."""
    from scalemm.fuse.variants import Variant, embed_variants, variant_presence

    batch = random_batch(4, present=PRESENCE, seed=5)
    for skip in (0.0, 2.0):
        model = _model(fusion_layers=0, frozen_skip=skip, masked_losses=False)
        assert model.first_tokens_suffice
        with torch.no_grad():
            enc_all, enc_first = model.encode(batch), model.encode(batch, first_only=True)
            assert {m: s.shape[1] for m, s in enc_first.seqs.items()} == {m: 1 for m in enc_all.seqs}
            a, b = model.fuse(enc_all), model.fuse(enc_first)
        for name in ("pooled", "enc_pooled", "importances", "weights"):
            assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), (skip, name)
        variants = [Variant("scale"), Variant("fused", source="fusion"), Variant("t+i", ("text", "image")),
                    Variant("drop", drop=0.4, drop_seed=3)]
        res = embed_variants(model, [batch], variants, torch.device("cpu"))
        for v in variants:
            keep = torch.from_numpy(variant_presence(v, model.modalities, batch["ids"]))
            with torch.no_grad():
                ref = product_embedding(model.fuse(enc_all, keep),
                                        EmbedSettings(source=v.source or model.embedding.source,
                                                      weighting=model.embedding.weighting))
            assert torch.allclose(torch.from_numpy(res["vectors"][v.name]), ref, atol=1e-5), (skip, v.name)
        with pytest.raises(ValueError, match="masked modelling reads every token"):
            model.encode(batch, {m: batch["mask"][m] for m in SMALL_SHAPES}, first_only=True)
    joint = _model(fusion_layers=1)
    assert not joint.first_tokens_suffice
    with torch.no_grad(), pytest.raises(ValueError, match="joint transformer"):
        joint.fuse(joint.encode(batch, first_only=True))


def test_training_forward_encodes_first_tokens_alone_with_the_same_loss_and_gradients() -> None:
    """Without masked modelling and a joint transformer, the training forward (fuse.step's
    Objective) encodes each modality's first token alone: with dropout on and the same seed, the
    loss and every parameter's gradient equal the every-token path's (its dropout draws the same
    random numbers). With masked modelling it encodes every token, whose predictions read them."""
    from scalemm.fuse.step import Objective

    batch = random_batch(4, present=PRESENCE, seed=7)
    batch["instances"] = ["a", "a", "b", "c"]
    cfg = tiny_config(fusion_layers=0, encoder_layers=2, masked_losses=False, dropout=0.3, frozen_skip=2.0,
                      simcl_weight=1.0, subset_weight=1.0)
    torch.manual_seed(0)
    model = ScaleModel(cfg, SMALL_SHAPES).train()
    objective = Objective(model, cfg)
    seen: list[int] = []
    hook = model.encoders["text"].register_forward_hook(lambda mod, args, out: seen.append(out[0].shape[1]))
    grads, losses = {}, {}
    for every in (True, False):
        model.every_token = every
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        total, _ = objective(batch, None)
        total.backward()
        losses[every] = float(total.detach())
        grads[every] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert seen == [1 + SMALL_SHAPES["text"][0], 1]  # every token, then the first alone
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 10
    for n, g in grads[True].items():
        assert torch.allclose(g, grads[False][n], atol=1e-5, rtol=1e-4), n
    torch.manual_seed(2)  # other dropout masks: another loss, so the equality above is the masks'
    assert float(objective(batch, None)[0].detach()) != pytest.approx(losses[False], rel=1e-3)
    masked = {m: batch["mask"][m] & (torch.rand(batch["mask"][m].shape) < 0.5) for m in SMALL_SHAPES}
    model.every_token = False
    model(batch, masked)
    assert seen[-1] == 1 + SMALL_SHAPES["text"][0]
    hook.remove()
