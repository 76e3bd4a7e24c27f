"""SIMCL against a hand computation, masked-modelling loss and whole-entity masking."""

from __future__ import annotations

import math

import torch

from scalemm.fuse.losses import masked_losses, scale_loss, simcl_loss
from scalemm.fuse.masking import choose_masks, entity_mask, token_mask
from scalemm.fuse.model import ModelOutput, ScaleModel
from fuse_helpers import SMALL_SHAPES, random_batch, tiny_config

torch.set_num_threads(1)


def _hand_simcl(pooled, present, W, tau):
    """SIMCL with explicit loops over pairs, anchors and candidates (float64 python math)."""
    B, M, _ = pooled.shape
    z = [[pooled[i, m].double() / pooled[i, m].double().norm() for m in range(M)] for i in range(B)]
    pair_losses = []
    for a in range(M):
        for b in range(a + 1, M):
            S = [i for i in range(B) if present[i, a] and present[i, b]]
            if len(S) < 2:
                continue
            directions = []
            for (x, y) in ((a, b), (b, a)):
                total = 0.0
                for i in S:
                    w = float(W[i, x, y])
                    logits = [w * float(z[i][x] @ z[j][y]) / tau for j in S]
                    mx = max(logits)
                    lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
                    total += lse - logits[S.index(i)]
                directions.append(total / len(S))
            pair_losses.append(0.5 * (directions[0] + directions[1]))
    return sum(pair_losses) / len(pair_losses), len(pair_losses)


def test_simcl_equals_hand_computed_infonce() -> None:
    g = torch.Generator().manual_seed(0)
    B, M, d = 5, 3, 6
    pooled = torch.randn(B, M, d, generator=g)
    present = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    W = torch.rand(B, M, M, generator=g) + 0.2
    loss, per_pair = simcl_loss(pooled, present, W, ["a", "b", "c"], temperature=0.07)
    ref, n_pairs = _hand_simcl(pooled, present, W, 0.07)
    assert len(per_pair) == n_pairs == 3
    assert abs(float(loss) - ref) < 1e-4
    # the weights matter (the test can fail): uniform weights give another value
    loss1, _ = simcl_loss(pooled, present, torch.ones_like(W), ["a", "b", "c"], 0.07)
    assert abs(float(loss1) - ref) > 1e-3


def test_simcl_skips_pairs_with_fewer_than_two_samples() -> None:
    pooled = torch.randn(3, 3, 4)
    present = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    loss, per_pair = simcl_loss(pooled, present, torch.ones(3, 3, 3), ["a", "b", "c"])
    assert list(per_pair) == ["a-b"]
    ref, _ = _hand_simcl(pooled, present, torch.ones(3, 3, 3), 0.07)
    assert abs(float(loss) - ref) < 1e-4
    none, pp = simcl_loss(pooled, torch.eye(3, dtype=torch.bool), torch.ones(3, 3, 3), ["a", "b", "c"])
    assert pp == {} and float(none) == 0.0


def test_masked_loss_is_importance_weighted_mean_of_samples() -> None:
    B, T, D = 3, 4, 5
    tokens = torch.randn(B, T, D)
    rows = torch.tensor([0, 0, 2])
    cols = torch.tensor([1, 3, 0])
    pred = torch.randn(3, D)
    imp = torch.tensor([[0.5], [0.9], [0.25]])
    out = ModelOutput(["image"], torch.ones(B, 1, dtype=torch.bool), torch.zeros(B, 1, 2), torch.zeros(B, 1, 2),
                      torch.ones(B, 1, 1), imp, {"image": (pred, rows, cols)})
    weighted, recon = masked_losses(out, {"image": tokens})
    tgt = torch.nn.functional.layer_norm(tokens[rows, cols], (D,))
    err = ((pred - tgt) ** 2).mean(-1)
    s0, s2 = err[:2].mean(), err[2]
    assert torch.allclose(weighted["image"], (0.5 * s0 + 0.25 * s2) / 2, atol=1e-6)
    assert torch.allclose(recon["image"], (s0 + s2) / 2, atol=1e-6)


def test_entity_masking_covers_whole_entities() -> None:
    batch = random_batch(16, seed=3, shapes={"table": (40, 8)})
    valid = batch["mask"]["table"]
    ent = batch["entities"]["table"]
    g = torch.Generator().manual_seed(0)
    mk = entity_mask(valid, ent, 0.15, g)
    assert not (mk & ~valid).any()
    assert not (mk & (ent < 0)).any()
    for i in range(16):
        for e in ent[i][valid[i]].unique().tolist():
            if e < 0:
                continue
            sel = (ent[i] == e) & valid[i]
            assert mk[i][sel].all() or not mk[i][sel].any(), f"entity {e} of row {i} partly masked"
        need = max(1, round(0.15 * int(valid[i].sum())))
        assert int(mk[i].sum()) >= need
    # the word-piece masker would split entities (so the check above can fail)
    split = False
    tm = token_mask(valid, 0.3, torch.Generator().manual_seed(1))
    for i in range(16):
        for e in ent[i][valid[i]].unique().tolist():
            sel = (ent[i] == e) & valid[i]
            if e >= 0 and tm[i][sel].any() and not tm[i][sel].all():
                split = True
    assert split


def test_token_mask_counts_and_determinism() -> None:
    batch = random_batch(6, seed=4, present={m: [True, True, False, True, True, True] for m in SMALL_SHAPES})
    m1 = choose_masks(batch, list(SMALL_SHAPES), 0.15, torch.Generator().manual_seed(7))
    m2 = choose_masks(batch, list(SMALL_SHAPES), 0.15, torch.Generator().manual_seed(7))
    for m in SMALL_SHAPES:
        assert torch.equal(m1[m], m2[m])
        assert not m1[m][2].any()  # absent item: nothing masked
        valid = batch["mask"][m]
        assert not (m1[m] & ~valid).any()
        if m != "table":
            k = torch.clamp(torch.round(valid.sum(1) * 0.15), min=1) * batch["present"][m]
            assert torch.equal(m1[m].sum(1), k.long())


def test_total_loss_switches_through_one_path() -> None:
    batch = random_batch(6, seed=5)
    torch.manual_seed(0)
    model = ScaleModel(tiny_config(), SMALL_SHAPES).eval()
    masks = choose_masks(batch, model.modalities, 0.15, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = scale_loss(model(batch, masks), batch)
        nomask = scale_loss(model(batch, None), batch)
    assert torch.allclose(full.total, full.simcl + full.masked)
    assert set(full.mask) == set(SMALL_SHAPES) and float(full.masked) > 0
    assert nomask.mask == {} and float(nomask.masked) == 0.0
    assert torch.isfinite(full.total)


def test_rescaled_weights_make_equal_agreement_neutral() -> None:
    """W with unit rows and equal entries (1/sqrt(M)) times sqrt(M) is the plain InfoNCE of W = 1;
    a sample with fewer present modalities is rescaled by its own count."""
    torch.manual_seed(0)
    B, M, d = 6, 3, 8
    pooled = torch.randn(B, M, d)
    present = torch.ones(B, M, dtype=torch.bool)
    mods = ["image", "text", "table"]
    equal = torch.full((B, M, M), 1 / math.sqrt(M))
    ones = torch.ones(B, M, M)
    plain, _ = simcl_loss(pooled, present, ones, mods)
    rescaled, _ = simcl_loss(pooled, present, equal, mods, rescale=True)
    unscaled, _ = simcl_loss(pooled, present, equal, mods)
    assert torch.allclose(plain, rescaled, atol=1e-6)
    assert not torch.allclose(plain, unscaled, atol=1e-3)  # unscaled W softens every logit
    from scalemm.fuse.losses import weight_scale
    present[0, 2] = False
    assert torch.allclose(weight_scale(present)[:2], torch.tensor([math.sqrt(2), math.sqrt(3)]))


def test_random_halves_split_each_product_into_two_nonempty_disjoint_halves() -> None:
    from scalemm.fuse.losses import random_halves
    torch.manual_seed(0)
    present = torch.rand(500, 5) < 0.7
    a, b, ok = random_halves(present)
    assert torch.equal(ok, present.sum(-1) >= 2)
    assert not (a & b).any()
    assert torch.equal((a | b)[ok], present[ok]) and not (a | b)[~ok].any()
    assert a[ok].any(-1).all() and b[ok].any(-1).all()
    # every present modality lands on either side about equally often
    assert abs(float(a[ok].sum()) / float(present[ok].sum()) - 0.5) < 0.05


def test_subset_consistency_loss_is_infonce_between_the_two_halves_embeddings() -> None:
    from scalemm.fuse.losses import random_halves, subset_consistency_loss
    model = ScaleModel(tiny_config(importance="gated", fusion_layers=0), SMALL_SHAPES)
    with torch.no_grad():
        out = model(random_batch(12, seed=3))
    torch.manual_seed(7)
    got = subset_consistency_loss(model, out, 0.1)
    torch.manual_seed(7)
    a, b, ok = random_halves(out.present)
    z = out.enc_pooled[ok]
    ea, eb = model.subset_embedding(z, a[ok]), model.subset_embedding(z, b[ok])
    logits = (ea @ eb.T / 0.1).double()
    ref = 0.5 * sum(torch.logsumexp(logits, 1) - logits.diag()).item() / len(z) \
        + 0.5 * sum(torch.logsumexp(logits.T, 1) - logits.diag()).item() / len(z)
    assert abs(got.item() - ref) < 1e-4


def test_subset_consistency_loss_learns_under_either_weighting() -> None:
    """The subset-consistency loss compares the two halves' summed embeddings, under the importance
    weighting and the plain sum alike: the loss is not log(B) (every logit equal, as when halves
    were compared by disjoint blocks) and its gradient reaches the modality encoders."""
    from scalemm.fuse.losses import subset_consistency_loss
    losses = {}
    for weighting in ("importance", "sum"):
        torch.manual_seed(0)
        model = ScaleModel(tiny_config(importance="gated", fusion_layers=0, weighting=weighting), SMALL_SHAPES)
        out = model(random_batch(12, seed=3))
        torch.manual_seed(7)
        loss = subset_consistency_loss(model, out, 0.1)
        loss.backward()
        grads = [p.grad.abs().sum() for p in model.encoders.parameters() if p.grad is not None]
        assert grads and float(sum(grads)) > 0
        assert abs(loss.item() - math.log(12)) > 1e-3
        losses[weighting] = loss.item()
    assert losses["importance"] != losses["sum"]  # the embedding's weighting is the one compared


def test_instance_positives_make_listings_of_one_instance_positives() -> None:
    """multi_positive_nce equals InfoNCE with the identity as positives, and equals a hand-computed
    -log(sum over positives / sum over all) otherwise; instance codes match equal instances only
    (a product without one is its own instance)."""
    from scalemm.fuse.losses import info_nce, instance_codes, multi_positive_nce

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 4, generator=g)
    assert torch.allclose(multi_positive_nce(logits, torch.eye(4, dtype=torch.bool)), info_nce(logits))
    codes = instance_codes(["p0", "p1", "p2", "p3"], ["x", "y", "x", ""])
    same = codes[:, None] == codes[None, :]
    assert same.tolist() == [[True, False, True, False], [False, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    e = logits.exp()
    ref = torch.stack([-torch.log(e[i][same[i]].sum() / e[i].sum()) for i in range(4)]).mean()
    assert torch.allclose(multi_positive_nce(logits, same), ref, atol=1e-6)
    assert not torch.allclose(multi_positive_nce(logits, same), info_nce(logits))
    assert torch.equal(instance_codes(["a"], ["x"]), instance_codes(["b"], ["x"]))  # stable, by instance
