#!/usr/bin/env bash
# run_train_bench.sh: LoRA training benchmark, peft.c vs Hugging Face transformers + PEFT, in one go.
#
#   bash bench/run_train_bench.sh [--full] [--steps N] [--warmup W] [--batch B] [--seq T]
#                                 [--recompute] [--peak-gflops G --peak-f32-gflops G]
#                                 [--hf-bf16-steps N] [--cache DIR] [--build DIR] [--out FILE.jsonl]
#                                 [--skip-hf-f32]
#
#   default  shape "small" (hidden 256, 8 layers, vocab 8192), 5 timed steps after 1 warmup
#   --full   shape "smollm2-135m" (SmolLM2-135M), 3 timed steps after 1 warmup
#   --recompute  also runs peft.c with gradient checkpointing (an extra row)
#   --hf-bf16-steps N  timed steps of the hf-bf16 peer (default: --steps where the CPU has
#                AVX512-BF16; else 1 step without warm-up: there torch runs bf16 matmuls in its generic gemm
#                at ~1-4 GFLOP/s and one SmolLM2-shape step takes several minutes); 0 skips it
#   OMP_WAIT_POLICY=PASSIVE (and OPENBLAS_CORETYPE where peft.c sets it) for every process,
#   unless the caller set them (see "runtime settings" below)
#
# Every implementation runs as its own process (so peak RSS is per process, ru_maxrss for all):
#   peft.c      build/bench_train (f32), then --f16 and --bf16 (frozen matmuls in 16 bits) where
#               `peft --version` says they run native kernels on this CPU (else skipped, and said)
#   hf-bf16     bench/hf_peer.py --dtype bf16 (transformers + PEFT LoRA, torch.autocast bf16)
#   hf-f32      bench/hf_peer.py --dtype f32
# on the same model files (bench/make_bench_model.py) and the same token ids, then a table
# with tokens/s, peak RSS, MFU and one line per peft.c variant and peer:
#   ratio <peft.c variant> / <peer>: tokens/s x<r>, peak RSS x<m>
# MFU's denominator is the bf16 matmul peak that bench/matmul_peak.py measures (pass
# --peak-gflops to skip that measurement). The peers run in $PEFT_PYTHON (default: the
# project's .venv, `make venv`). OPENBLAS_* variables are passed through unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFT_PYTHON:-$ROOT/.venv/bin/python}"
BUILD="${PEFT_BUILD:-$ROOT/build}"
CACHE="${PEFT_BENCH_CACHE:-/tmp/peft-bench-models}"
SHAPE=small
STEPS=""
WARMUP=1
BATCH=4
SEQ=256
RECOMPUTE=0
PEAK=""
PEAK32=""
OUT=""
SKIP_F32=0
HF_BF16_STEPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) SHAPE=smollm2-135m ;;
    --shape) SHAPE="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --batch) BATCH="$2"; shift ;;
    --seq) SEQ="$2"; shift ;;
    --recompute) RECOMPUTE=1 ;;
    --peak-gflops) PEAK="$2"; shift ;;
    --peak-f32-gflops) PEAK32="$2"; shift ;;
    --cache) CACHE="$2"; shift ;;
    --build) BUILD="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --hf-bf16-steps) HF_BF16_STEPS="$2"; shift ;;
    --skip-hf-f32) SKIP_F32=1 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$STEPS" ]; then
  if [ "$SHAPE" = small ]; then STEPS=5; else STEPS=3; fi
fi
"$PY" -c 'import peft, torch, transformers' 2>/dev/null ||
  { echo "run_train_bench: $PY cannot import torch, transformers and peft (make venv, or set PEFT_PYTHON)" >&2; exit 1; }
RES="$(mktemp)"
trap 'rm -f "$RES"' EXIT

echo "== environment"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-<unset>} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-<unset>}" \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY-<unset>} OMP_NUM_THREADS=${OMP_NUM_THREADS-<unset>} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-<unset>}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== build"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null; fi
cmake --build "$BUILD" --target bench_train bench_peak peft_cli -j "$(nproc)" >/dev/null

# peft.c re-executes itself with OMP_WAIT_POLICY=PASSIVE and, where OpenBLAS fell back to SSE3
# kernels on an AVX-512 CPU, OPENBLAS_CORETYPE=SkylakeX (peft_runtime_reexec). The PyTorch peers
# and the matmul peak get the same settings, so both sides run the same BLAS kernels and wait
# policy (a user's own settings are kept).
echo "== runtime settings"
eval "export $("$BUILD/bench_train" --runtime)"
echo "OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE OMP_WAIT_POLICY=$OMP_WAIT_POLICY for every process"
# peft.c's thread count: its OpenMP pool, OMP_NUM_THREADS or every core; the peers get the same.
THREADS="${OMP_NUM_THREADS:-$(nproc)}"
echo "threads: $THREADS for peft.c (OpenMP) and the peers (torch.set_num_threads)"
VERSION="$("$BUILD/peft" --version)"
echo "$VERSION"
HALF=()  # the 16-bit peft.c variants that run native kernels here
for h in f16 bf16; do
  if echo "$VERSION" | grep -q -- "--$h AVX512"; then HALF+=("$h")
  else echo "peft.c --$h: not run, this CPU has no native kernel for it (sgemm fallback, slower than f32)"; fi
done
if [ -z "$HF_BF16_STEPS" ]; then
  if echo "$VERSION" | grep -q -- "--bf16 AVX512"; then HF_BF16_STEPS="$STEPS"; HF_BF16_WARMUP="$WARMUP"
  else
    HF_BF16_STEPS=1; HF_BF16_WARMUP=0
    echo "hf-bf16: 1 timed step, no warm-up (no AVX512-BF16: torch runs bf16 matmuls in its generic gemm, minutes per step)"
  fi
else HF_BF16_WARMUP="$WARMUP"; fi

echo "== model ($SHAPE)"
MODEL="$("$PY" "$ROOT/bench/make_bench_model.py" --shape "$SHAPE" --out "$CACHE")"
echo "$MODEL"

if [ -z "$PEAK" ] || [ -z "$PEAK32" ]; then
  echo "== matmul peak (bench/matmul_peak.py)"
  PEAKJ="$("$PY" "$ROOT/bench/matmul_peak.py" --threads "$THREADS")"
  echo "$PEAKJ"
  [ -n "$PEAK" ] || PEAK="$(echo "$PEAKJ" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["bf16_gflops"])')"
  [ -n "$PEAK32" ] || PEAK32="$(echo "$PEAKJ" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["f32_gflops"])')"
fi
echo "peak bf16 ${PEAK} GFLOP/s, peak f32 ${PEAK32} GFLOP/s (matmuls through torch: oneDNN bf16, MKL f32)"
echo "== instruction peak (bench_peak: FMA / vdpbf16ps / f16 FMA chains, no memory traffic)"
IPEAK="$("$BUILD/bench_peak")"
echo "$IPEAK"

COMMON=(--model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup-steps "$WARMUP"
        --peak-gflops "$PEAK" --peak-f32-gflops "$PEAK32")
run() { # name, command...
  local name="$1"; shift
  echo "== $name (load $(cut -d' ' -f1 /proc/loadavg), $(date +%T))"
  "$@" 2> >(grep --line-buffered -v -e '^Loading weights' -e 'is_gradient_checkpointing' -e '^  warnings.warn(' | sed 's/^/   /' >&2) | tee -a "$RES"
}
run peft.c "$BUILD/bench_train" "${COMMON[@]}"
for h in "${HALF[@]}"; do
  run "peft.c --$h" "$BUILD/bench_train" "${COMMON[@]}" --"$h" --impl peft.c-"$h"
done
if [ "$RECOMPUTE" = 1 ]; then
  run "peft.c --recompute" "$BUILD/bench_train" "${COMMON[@]}" --recompute --impl peft.c-recompute
fi
HF=(--model "$MODEL" --batch "$BATCH" --seq "$SEQ" --peak-gflops "$PEAK" --peak-f32-gflops "$PEAK32" --threads "$THREADS")
if [ "$HF_BF16_STEPS" != 0 ]; then
  run hf-bf16 "$PY" "$ROOT/bench/hf_peer.py" "${HF[@]}" --dtype bf16 --steps "$HF_BF16_STEPS" --warmup-steps "$HF_BF16_WARMUP"
fi
if [ "$SKIP_F32" = 0 ]; then
  run hf-f32 "$PY" "$ROOT/bench/hf_peer.py" "${HF[@]}" --dtype f32 --steps "$STEPS" --warmup-steps "$WARMUP"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$OUT" ] || cp "$RES" "$OUT"

BF16_NOTE=""
[ "$HF_BF16_STEPS" = 0 ] || BF16_NOTE=" (hf-bf16: $HF_BF16_STEPS after $HF_BF16_WARMUP)"
echo "== results: shape $SHAPE, batch $BATCH x seq $SEQ, LoRA r16 all-linear, AdamW; $STEPS timed steps after $WARMUP warmup$BF16_NOTE"
"$PY" - "$RES" "$IPEAK" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ipeak = json.loads(sys.argv[2])
by = {r["impl"]: r for r in rows}
def f(v, fmt):
    return "-" if v is None else fmt % v
print("%-18s %10s %10s %9s %9s %8s %8s %8s %9s" % ("impl", "tokens/s", "best tok/s", "step_s", "rss_MB",
      "MFU%", "MFUf32%", "fwd_s", "bwd_s"))
for r in rows:
    print("%-18s %10.1f %10.1f %9.3f %9.1f %8s %8s %8.3f %9.3f" % (
        r["impl"], r["tokens_per_s"], r["batch"] * r["seq"] / r["step_min_s"], r["step_s"], r["peak_rss_mb"],
        f(r["mfu"] and 100 * r["mfu"], "%.2f"), f(r.get("mfu_vs_f32_peak") and 100 * r["mfu_vs_f32_peak"], "%.2f"),
        r["fwd_s"], r["bwd_s"]))
print("model GFLOP/step: %.2f" % rows[0]["model_gflops_per_step"])
# Every side trained the same model on the same token ids: step 0 runs with B = 0 (the base
# model), so its loss is the same function of the same inputs on every side.
print("first-step loss (base model, same batch): " + ", ".join("%s %.5f" % (r["impl"], r["first_loss"]) for r in rows))
peers = [r for r in rows if r["impl"].startswith("hf-")]
for c in rows:
    if not c["impl"].startswith("peft.c"):
        continue
    for t in peers:
        print("ratio %s / %s: tokens/s x%.2f, peak RSS x%.2f" % (
            c["impl"], t["impl"], c["tokens_per_s"] / t["tokens_per_s"], c["peak_rss_mb"] / t["peak_rss_mb"]))
for r in rows:
    if r["impl"].startswith("peft.c") and ipeak["f32_fma_gflops"]:
        print("%-18s achieved %.1f GFLOP/s = %.1f%% of the f32 FMA / %s instruction peak" % (
            r["impl"], r["achieved_gflops"], 100 * r["achieved_gflops"] / ipeak["f32_fma_gflops"],
            "-" if not ipeak["f16_fma_gflops"] else "%.1f%% of the f16 FMA" % (100 * r["achieved_gflops"] / ipeak["f16_fma_gflops"])))
print("issue target: tokens/s >= x2.50 vs hf-bf16, peak RSS <= x0.40 vs hf-bf16")
EOF
