#!/usr/bin/env bash
# The whole pipeline on the built-in demo corpus (what `make demo` runs):
# corpus -> private local Ray head -> extraction via `ray job submit` -> training (SCALE and
# the uniform-weight ablation) -> evaluation -> report. Stops the Ray head it started.
set -euo pipefail
OUT=$(realpath -m "${1:-demo-output}")
ITEMS=${2:-600}
SEED=${SEED:-0}
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-token} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
step() { printf '\n==== %s\n' "$*" >&2; }
T0=$(date +%s)

step "1/5 demo corpus: $ITEMS products -> $OUT/corpus"
if [ ! -f "$OUT/corpus/corpus_stats.json" ]; then
  python pipelines/make_corpus.py --out "$OUT/corpus" --items "$ITEMS" --seed "$SEED" | tail -n 1
else
  echo "(exists, kept)" >&2
fi

step "2/5 private Ray head on loopback"
port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GCS=$(port); DASH=$(port)
setsid ray start --head --block --port="$GCS" --dashboard-port="$DASH" --dashboard-host=127.0.0.1 \
  --ray-client-server-port="$(port)" --dashboard-agent-listen-port="$(port)" --dashboard-agent-grpc-port="$(port)" \
  --runtime-env-agent-port="$(port)" --metrics-export-port="$(port)" --disable-usage-stats \
  > "$OUT/ray-head.log" 2>&1 &
HEAD_PID=$!
# SIGTERM stops the head but leaves its address in ray_current_cluster, where a later ray.init()
# without an address would wait for ever for it: remove it when it names this head
RAY_ADDR_FILE="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"
cleanup() {
  kill -TERM -- "-$HEAD_PID" 2>/dev/null || true; wait "$HEAD_PID" 2>/dev/null || true
  if grep -q ":$GCS\$" "$RAY_ADDR_FILE" 2>/dev/null; then rm -f "$RAY_ADDR_FILE"; fi
}
trap cleanup EXIT
ADDR="http://127.0.0.1:$DASH"
for _ in $(seq 90); do curl -s -o /dev/null "$ADDR/api/version" && break; sleep 1; done
echo "dashboard: $ADDR" >&2

step "3/5 extraction: ray job submit ... -- python pipelines/extract.py"
for try in $(seq 30); do
  if ray job submit --address "$ADDR" --working-dir . -- python pipelines/extract.py \
      --corpus "$OUT/corpus/corpus.jsonl" --media-root "$OUT/corpus" --out "$OUT/feats" \
      > "$OUT/extract.log" 2>&1; then break; fi
  if grep -q "No available agent" "$OUT/extract.log"; then sleep 2; continue; fi
  tail -n 20 "$OUT/extract.log" >&2; exit 1
done
grep '^{' "$OUT/extract.log" | tail -n 1
python pipelines/store_info.py "$OUT/feats" > "$OUT/store_info.json"
python - "$OUT" <<'PY'
import json, sys
info = json.load(open(f"{sys.argv[1]}/store_info.json"))
print("store:", info["items"], "items,", info["failures"], "failures;",
      ", ".join(f"{m} {v['present']}x{v['dim']}" for m, v in info["modalities"].items()), file=sys.stderr)
PY

step "4/5 training SCALE (self-harmonized) and SCALE with uniform pair weights"
train() {  # RUN [args]: a rerun of the demo resumes a run that has checkpoints
  local run=$1; shift
  if [ -f "$run/checkpoints/latest.json" ]; then
    python pipelines/train.py --features "$OUT/feats" --out "$run" --resume | tail -n 1
  else
    python pipelines/train.py --features "$OUT/feats" --out "$run" "$@" | tail -n 1
  fi
}
train "$OUT/run_scale"
train "$OUT/run_uniform" --config configs/scale_uniform.yaml

step "5/5 evaluation -> $OUT/eval"
python pipelines/evaluate.py --features "$OUT/feats" --checkpoint "$OUT/run_scale" \
  --uniform-checkpoint "$OUT/run_uniform" --out "$OUT/eval" | tail -n 1
echo "report: $OUT/eval/report.md  gallery: $OUT/eval/gallery.html  ($(( $(date +%s) - T0 )) s)" >&2
