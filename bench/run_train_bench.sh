#!/usr/bin/env bash
# run_train_bench.sh: LoRA training benchmark, peft.c vs PyTorch (issue 5), in one go.
#
#   bash bench/run_train_bench.sh [--full] [--steps N] [--warmup W] [--batch B] [--seq T]
#                                 [--recompute] [--peak-gflops G --peak-f32-gflops G]
#                                 [--cache DIR] [--build DIR] [--out FILE.jsonl] [--skip-torch-f32]
#
#   default  shape "small" (hidden 256, 8 layers, vocab 8192), 5 timed steps after 1 warmup
#   --full   shape "smollm2-135m" (SmolLM2-135M), 3 timed steps after 1 warmup
#   --recompute  also runs peft.c with gradient checkpointing (an extra row)
#   OMP_WAIT_POLICY=PASSIVE (and OPENBLAS_CORETYPE where peft.c sets it) for every process,
#   unless the caller set them (see "runtime settings" below)
#
# Every implementation runs as its own process (so peak RSS is per process):
#   peft.c      build/bench_train (f32), then --f16 and --bf16 (frozen matmuls in 16 bits)
#   torch-bf16  bench/torch_peer.py --dtype bf16 (autocast)
#   torch-f32   bench/torch_peer.py --dtype f32
# then a table with tokens/s, peak RSS, MFU and the ratios peft.c / torch-bf16 and
# peft.c / torch-f32. MFU's denominator is the bf16 matmul peak that bench/matmul_peak.py
# measures (pass --peak-gflops to skip that measurement). OPENBLAS_* variables are passed
# through unchanged to every process.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFT_TORCH_PYTHON:-/usr/bin/python3}"
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
    --skip-torch-f32) SKIP_F32=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$STEPS" ]; then
  if [ "$SHAPE" = small ]; then STEPS=5; else STEPS=3; fi
fi
RES="$(mktemp)"
trap 'rm -f "$RES"' EXIT

echo "== environment"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-<unset>} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-<unset>}" \
     "OMP_WAIT_POLICY=${OMP_WAIT_POLICY-<unset>} OMP_NUM_THREADS=${OMP_NUM_THREADS-<unset>} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-<unset>}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== build"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null; fi
cmake --build "$BUILD" --target bench_train bench_peak -j "$(nproc)" >/dev/null

# peft.c re-executes itself with OMP_WAIT_POLICY=PASSIVE and, where OpenBLAS fell back to SSE3
# kernels on an AVX-512 CPU, OPENBLAS_CORETYPE=SkylakeX (peft_runtime_reexec). The PyTorch peers
# and the matmul peak get the same settings, so both sides run the same BLAS kernels and wait
# policy (a user's own settings are kept).
echo "== runtime settings"
eval "export $("$BUILD/bench_train" --runtime)"
echo "OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE OMP_WAIT_POLICY=$OMP_WAIT_POLICY for every process"

echo "== model ($SHAPE)"
MODEL="$("$PY" "$ROOT/bench/make_bench_model.py" --shape "$SHAPE" --out "$CACHE")"
echo "$MODEL"

if [ -z "$PEAK" ] || [ -z "$PEAK32" ]; then
  echo "== matmul peak (bench/matmul_peak.py)"
  PEAKJ="$("$PY" "$ROOT/bench/matmul_peak.py" --threads 2)"
  echo "$PEAKJ"
  [ -n "$PEAK" ] || PEAK="$(echo "$PEAKJ" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["bf16_gflops"])')"
  [ -n "$PEAK32" ] || PEAK32="$(echo "$PEAKJ" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["f32_gflops"])')"
fi
echo "peak bf16 ${PEAK} GFLOP/s, peak f32 ${PEAK32} GFLOP/s (matmuls through torch: oneDNN bf16, OpenBLAS f32)"
echo "== instruction peak (bench_peak: FMA / vdpbf16ps / f16 FMA chains, no memory traffic)"
IPEAK="$("$BUILD/bench_peak")"
echo "$IPEAK"

COMMON=(--model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup-steps "$WARMUP"
        --peak-gflops "$PEAK" --peak-f32-gflops "$PEAK32")
run() { # name, command...
  local name="$1"; shift
  echo "== $name (load $(cut -d' ' -f1 /proc/loadavg))"
  "$@" 2> >(sed 's/^/   /' >&2) | tee -a "$RES"
}
run peft.c "$BUILD/bench_train" "${COMMON[@]}"
run "peft.c --f16" "$BUILD/bench_train" "${COMMON[@]}" --f16 --impl peft.c-f16
run "peft.c --bf16" "$BUILD/bench_train" "${COMMON[@]}" --bf16 --impl peft.c-bf16
if [ "$RECOMPUTE" = 1 ]; then
  run "peft.c --recompute" "$BUILD/bench_train" "${COMMON[@]}" --recompute --impl peft.c-recompute
fi
run torch-bf16 "$PY" "$ROOT/bench/torch_peer.py" "${COMMON[@]}" --dtype bf16 --threads 2
if [ "$SKIP_F32" = 0 ]; then
  run torch-f32 "$PY" "$ROOT/bench/torch_peer.py" "${COMMON[@]}" --dtype f32 --threads 2
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$OUT" ] || cp "$RES" "$OUT"

echo "== results: shape $SHAPE, batch $BATCH x seq $SEQ, LoRA r16 all-linear, AdamW; $STEPS timed steps after $WARMUP warmup"
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
for name, c in by.items():
    if not name.startswith("peft.c"):
        continue
    for ref in ("torch-bf16", "torch-f32"):
        t = by.get(ref)
        if not t:
            continue
        print("%-18s / %-10s tokens/s x%.2f (best-step x%.2f)   peak RSS x%.2f" % (
            name, ref, c["tokens_per_s"] / t["tokens_per_s"], t["step_min_s"] / c["step_min_s"],
            c["peak_rss_mb"] / t["peak_rss_mb"]))
for r in rows:
    if r["impl"].startswith("peft.c"):
        print("%-18s achieved %.1f GFLOP/s = %.1f%% of the f32 FMA / %s instruction peak" % (
            r["impl"], r["achieved_gflops"], 100 * r["achieved_gflops"] / ipeak["f32_fma_gflops"],
            "-" if not ipeak["f16_fma_gflops"] else "%.1f%% of the f16 FMA" % (100 * r["achieved_gflops"] / ipeak["f16_fma_gflops"])))
print("issue target: tokens/s >= x2.50 vs torch-bf16, peak RSS <= x0.40 vs torch-bf16")
EOF
