#!/usr/bin/env bash
# The whole pipeline on the built-in demo corpus (what `make demo` runs), or, with
# CORPUS=clipart, on the real-media development corpus (what `make dev` runs):
# corpus -> private local Ray head -> extraction via `ray job submit` -> training (SCALE, and
# with UNIFORM=1 the uniform-weight ablation) -> evaluation -> report and gallery. Stops the Ray
# head it started.
# Needs the venv's python and ray first on PATH (`make demo` sees to it).
set -euo pipefail
OUT=$(realpath -m "${1:-demo-output}")
ITEMS=${2:-600}
SEED=${SEED:-0}
CORPUS=${CORPUS:-demo}  # demo (synthetic) | clipart (real media; Debian's openclipart-png, espeak-ng)
SEEDS=${SEEDS:-0}       # training seeds (e.g. 0,1,2): the evaluation reports mean +- std over them
UNIFORM=${UNIFORM:-0}   # 1: also train scale_uniform (uniform pair weights) and compare
PAPER=${PAPER:-0}       # 1: also train the paper's SCALE (configs/scale_paper.yaml) and compare
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
step() { printf '\n==== %s\n' "$*" >&2; }
T0=$(date +%s)

step "1/5 $CORPUS corpus: $ITEMS products -> $OUT/corpus"
if [ ! -f "$OUT/corpus/corpus_stats.json" ]; then
  python pipelines/make_corpus.py --kind "$CORPUS" --out "$OUT/corpus" --items "$ITEMS" --seed "$SEED" | tail -n 1
else
  echo "(exists, kept)" >&2
fi

step "2/5 private Ray head on loopback: own token, ports and temp dir in $OUT/ray"
# never the user's ~/.ray nor /tmp/ray (see scalemm/ray_head.py); a head that does not start
# ends the demo here with one error line read from its log
python pipelines/ray_head.py start "$OUT/ray" > /dev/null
trap 'python pipelines/ray_head.py stop "$OUT/ray" > /dev/null' EXIT

step "3/5 extraction: ray job submit ... -- python pipelines/extract.py"
# env.sh: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH, RAY_API_SERVER_ADDRESS (for this command only)
# shellcheck source=/dev/null
if ! (source "$OUT/ray/env.sh" && ray job submit --working-dir . -- python pipelines/extract.py \
    --corpus "$OUT/corpus/corpus.jsonl" --media-root "$OUT/corpus" --out "$OUT/feats") > "$OUT/extract.log" 2>&1; then
  tail -n 20 "$OUT/extract.log" >&2
  echo "error: the extraction job failed; its output is in $OUT/extract.log, the head's logs in $OUT/ray/logs" >&2
  exit 1
fi
grep '^{' "$OUT/extract.log" | tail -n 1
# the head is not needed after extraction: give its CPU back to training
python pipelines/ray_head.py stop "$OUT/ray" > /dev/null
trap - EXIT
python pipelines/store_info.py "$OUT/feats" > "$OUT/store_info.json"
python - "$OUT" <<'PY'
import json, sys
info = json.load(open(f"{sys.argv[1]}/store_info.json"))
print("store:", info["items"], "items,", info["failures"], "failures;",
      ", ".join(f"{m} {v['present']}x{v['dim']}" for m, v in info["modalities"].items()), file=sys.stderr)
PY

step "4/5 training SCALE$([ "$UNIFORM" = 1 ] && echo ", SCALE with uniform pair weights")$([ "$PAPER" = 1 ] && echo ", the paper's SCALE"), seeds $SEEDS, on the train split"
train() {  # RUN [args]: one run per seed in RUN/seed-<s>/; a rerun of the demo resumes them
  local run=$1; shift
  if [ -d "$run/seed-${SEEDS%%,*}/checkpoints" ]; then
    python pipelines/train.py --features "$OUT/feats" --out "$run" --seeds "$SEEDS" --resume "$@" | tail -n 1
  else
    python pipelines/train.py --features "$OUT/feats" --out "$run" --seeds "$SEEDS" "$@" | tail -n 1
  fi
}
train "$OUT/run_scale"
MODEL_ARGS=()
if [ "$UNIFORM" = 1 ]; then
  train "$OUT/run_uniform" --config configs/scale_uniform.yaml
  MODEL_ARGS=(--uniform-checkpoint "$OUT/run_uniform")
fi
if [ "$PAPER" = 1 ]; then
  train "$OUT/run_paper" --config configs/scale_paper.yaml
  MODEL_ARGS+=(--model "scale_paper=$OUT/run_paper")
  # the default's checkpoints with the sum alone, without their heads (docs/results.md: scale_sum)
  MODEL_ARGS+=(--model "scale_sum=$OUT/run_scale" --embedding "scale_sum:modality_heads=[]")
fi

step "5/5 evaluation on the test split (mean +- std over the seeds) -> $OUT/eval"
python pipelines/evaluate.py --features "$OUT/feats" --checkpoint "$OUT/run_scale" \
  "${MODEL_ARGS[@]}" --out "$OUT/eval" | tail -n 1
echo "report: $OUT/eval/report.md  gallery: $OUT/eval/gallery.html  ($(( $(date +%s) - T0 )) s)" >&2
