#!/usr/bin/env bash
# run_longseq_bench.sh: LoRA training at long sequences and on the Llama-3.2-1B shape, peft.c vs
# Hugging Face transformers + PEFT (issue 17 item 3): tokens/s and peak RSS, with and without
# gradient checkpointing on both sides.
#
#   bash bench/run_longseq_bench.sh [--seqs 512,2048,4096] [--repeats 2] [--long-repeats 1]
#                                   [--skip-1b] [--parts-seq T] [--cache DIR] [--build DIR] [--summary LOG]
#
# Rows (each its own process, one at a time; batch 1, LoRA r16 alpha 32 on all seven projections,
# AdamW lr 1e-4, bench_train's random token ids, the same ids on both sides):
#   peft.c f32        build/bench_train               peft.c f32 + --recompute (checkpointing)
#   hf-f32            bench/hf_peer.py --dtype f32    hf-f32 + --grad-checkpointing (sdpa attention)
# SmolLM2-135M shape (make_bench_model.py) at every T of --seqs: T <= 1024 gets 1 warmup + 1
# timed step and --repeats repeats; longer T get no warmup, 1 timed step (the step then includes
# first-touch page faults of the model, < 1 % of a step there) and --long-repeats repeats.
# Llama-3.2-1B shape (tests/data/llama-3.2-1b-config.json, random f32 weights, ~5 GB, cached
# where run_quant_bench.sh caches it), batch 1 x 512, 1 warmup + 1 timed step, 1 repeat, only
# when `free` shows >= 12 GiB available.
# --parts-seq T: also bench_train_parts at T (per-kernel split of one step, attention share).
# Every JSON line goes to stdout with the load average before its run; peak RSS is each
# process's getrusage ru_maxrss (the peers' includes ~0.8 GB of torch/transformers imports).
# At the end: one table per shape (tokens/s median over repeats, max peak RSS, fwd/bwd split)
# and the ratios peft.c / peer; `--summary LOG` redoes that from a saved log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFT_PYTHON:-$ROOT/.venv/bin/python}"
BUILD="${PEFT_BUILD:-$ROOT/build}"
CACHE="${PEFT_BENCH_CACHE:-/tmp/peft-bench-models}"
SEQS=512,2048,4096 REPEATS=2 LONG_REPEATS=1 SKIP_1B=0 PARTS_SEQ="" SUMMARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seqs) SEQS="$2"; shift ;;
    --repeats) REPEATS="$2"; shift ;;
    --long-repeats) LONG_REPEATS="$2"; shift ;;
    --skip-1b) SKIP_1B=1 ;;
    --parts-seq) PARTS_SEQ="$2"; shift ;;
    --cache) CACHE="$2"; shift ;;
    --build) BUILD="$2"; shift ;;
    --summary) SUMMARY="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# summarize LOG: the tables of a log this script wrote (shape from its "== " section lines).
summarize() {
  "$PY" - "$1" <<'EOF'
import collections, json, re, sys
rows, shape = collections.defaultdict(list), None
for line in open(sys.argv[1]):
    if line.startswith("== SmolLM2") or line.startswith("== Llama"):
        shape = line.split(",")[0][3:].strip()
    m = re.match(r"(\S+) T=(\d+) rep=\d+ load=(\S+) (\{.*\})$", line.strip())
    if m and shape:
        rows[(shape, int(m.group(2)), m.group(1))].append((json.loads(m.group(4)), m.group(3)))
def med(x):
    x = sorted(x)
    return (x[(len(x) - 1) // 2] + x[len(x) // 2]) / 2
def col(r, f, key):
    return ", ".join(f % j[key] for j, _ in r)
for shape in dict.fromkeys(k[0] for k in rows):
    keys = sorted(k for k in rows if k[0] == shape)
    print("\n%s\n| T | row | tokens/s (median) | per repeat | peak RSS MB | fwd s | bwd s | load avg |" % shape)
    print("|---|---|---|---|---|---|---|---|")
    for k in keys:
        r = rows[k]
        print("| %d | %s | %.1f | %s | %.0f | %s | %s | %s |" % (k[1], k[2], med([j["tokens_per_s"] for j, _ in r]),
              col(r, "%.1f", "tokens_per_s"), max(j["peak_rss_mb"] for j, _ in r), col(r, "%.1f", "fwd_s"),
              col(r, "%.1f", "bwd_s"), ", ".join(l for _, l in r)))
    for T in sorted({k[1] for k in keys}):
        for a, b in (("peft-f32", "hf-f32"), ("peft-f32-recompute", "hf-f32-gc")):
            if (shape, T, a) in rows and (shape, T, b) in rows:
                A, B = rows[(shape, T, a)], rows[(shape, T, b)]
                print("    T=%d ratio %s / %s: tokens/s x%.2f, peak RSS x%.2f" % (T, a, b,
                      med([j["tokens_per_s"] for j, _ in A]) / med([j["tokens_per_s"] for j, _ in B]),
                      max(j["peak_rss_mb"] for j, _ in A) / max(j["peak_rss_mb"] for j, _ in B)))
EOF
}
if [ -n "$SUMMARY" ]; then summarize "$SUMMARY"; exit 0; fi
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
exec > >(tee "$LOG")  # everything below is also kept for the summary

echo "== environment"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "flags:$(grep -m1 -o -w -e avx2 -e avx512f -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null; fi
cmake --build "$BUILD" --target bench_train bench_train_parts -j "$(nproc)" >/dev/null
eval "export $("$BUILD/bench_train" --runtime)"  # the peers get peft.c's runtime settings
THREADS="${OMP_NUM_THREADS:-$(nproc)}"
"$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers",
  transformers.__version__, "peft", peft.__version__)'

# run LABEL CMD...: one process; prints "LABEL load=<1-min load average> <its JSON line>".
run() {
  local label="$1" load
  shift
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "$label load=$load $("$@" 2>/dev/null | tail -1)"
}

# rows MODEL T WARMUP REPEATS: the four rows at one shape and T.
rows() {
  local model="$1" T="$2" w="$3" reps="$4" r
  for r in $(seq 1 "$reps"); do
    run "peft-f32 T=$T rep=$r" "$BUILD/bench_train" --model "$model" --batch 1 --seq "$T" --steps 1 --warmup-steps "$w"
    run "peft-f32-recompute T=$T rep=$r" "$BUILD/bench_train" --model "$model" --batch 1 --seq "$T" --steps 1 \
      --warmup-steps "$w" --recompute
    run "hf-f32 T=$T rep=$r" "$PY" "$ROOT/bench/hf_peer.py" --model "$model" --dtype f32 --batch 1 --seq "$T" \
      --steps 1 --warmup-steps "$w" --threads "$THREADS"
    run "hf-f32-gc T=$T rep=$r" "$PY" "$ROOT/bench/hf_peer.py" --model "$model" --dtype f32 --batch 1 --seq "$T" \
      --steps 1 --warmup-steps "$w" --threads "$THREADS" --grad-checkpointing
  done
}

echo "== SmolLM2-135M shape, batch 1"
SMOL="$("$PY" "$ROOT/bench/make_bench_model.py" --shape smollm2-135m --out "$CACHE")"
for T in ${SEQS//,/ }; do
  if [ "$T" -le 1024 ]; then rows "$SMOL" "$T" 1 "$REPEATS"; else rows "$SMOL" "$T" 0 "$LONG_REPEATS"; fi
done
if [ -n "$PARTS_SEQ" ]; then
  echo "== bench_train_parts, SmolLM2-135M shape, batch 1 x $PARTS_SEQ"
  "$BUILD/bench_train_parts" --config "$SMOL/config.json" --batch 1 --seq "$PARTS_SEQ" --reps 1
fi

if [ "$SKIP_1B" = 0 ]; then
  echo "== Llama-3.2-1B shape (random weights), batch 1 x 512"
  BIG="$CACHE/llama-3.2-1b"  # the model run_quant_bench.sh makes (same config, seed 0)
  if [ ! -f "$BIG/model.safetensors" ]; then
    "$PY" - "$ROOT/tests/data/llama-3.2-1b-config.json" "$BIG" <<'EOF'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig.from_json_file(sys.argv[1])).save_pretrained(sys.argv[2], max_shard_size="20GB")
EOF
  fi
  avail="$(free -g | awk '/^Mem/ {print $7}')"
  echo "memory available: $avail GiB"
  if [ "$avail" -ge 12 ]; then rows "$BIG" 512 1 1; else echo "skipped: under 12 GiB available"; fi
fi
echo "== summary"
summarize "$LOG"
