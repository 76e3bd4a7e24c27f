"""Write scale-fuse-1 checkpoints with the code from before the config rework (run with the
snapshot on PYTHONPATH), and the embeddings that code gives a fixed batch."""
import sys, json
sys.path.insert(0, "/work/exp/wt/tests")
import numpy as np, torch
from fuse_helpers import SMALL_SHAPES, make_provenance, tiny_config, random_batch
from scalemm.fuse.model import ScaleModel, product_embedding
from scalemm.fuse.checkpoint import save_checkpoint, FORMAT
assert FORMAT == "scale-fuse-1"
out = sys.argv[1]
prov = {m: make_provenance(m, *s) for m, s in SMALL_SHAPES.items()}
cases = {
  # the defaults of the time, small: gated importance, corroborated agreement, both corrections
  "gated": dict(importance="gated", agreement="corroborated", importance_shrink=0.0, identification_power=2.0,
                fusion_layers=1, frozen_skip=25.0, subset_weight=1.0, instance_positives=True, d_model=32),
  # with the importance shrinkage since removed: it loads, and embeds as the old code did without it
  "shrunk": dict(importance="gated", agreement="corroborated", importance_shrink=3.0, identification_power=2.0,
                 fusion_layers=1, frozen_skip=25.0, subset_weight=1.0, instance_positives=True, d_model=32),
  # no corrections (no running statistics in the weights), embedding from the fused tokens, plain sum
  "plain": dict(importance="gated", agreement="corroborated", importance_shrink=0.0, identification_power=0.0,
                embed_from="fusion", embed_weighting="sum", fusion_layers=1, d_model=32),
}
expected = {}
for name, kw in cases.items():
    torch.manual_seed(0)
    cfg = tiny_config(**kw)
    model = ScaleModel(cfg, SMALL_SHAPES)
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(random_batch(B=8, seed=10 + s))
    model.eval()
    model.harmonizer.shrink = 0.0  # the expected vectors: without the shrinkage, removed since
    b = random_batch(B=6, seed=1)
    with torch.no_grad():
        o = model(b)
        emb = product_embedding(o, cfg.embed_from, cfg.embed_weighting, cfg.block_weight)
    expected[name] = emb.numpy()
    save_checkpoint(f"{out}/{name}", 3, model, {}, cfg, prov, keep=1)
np.savez(f"{out}/expected_embeddings.npz", **expected)
print("ok", {k: v.shape for k, v in expected.items()})
