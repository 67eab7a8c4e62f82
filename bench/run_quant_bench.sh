#!/usr/bin/env bash
# run_quant_bench.sh: LoRA training on a quantized frozen base (QLoRA-style), peft.c vs
# Hugging Face transformers + PEFT + bitsandbytes: peak RSS, tokens/s and validation loss.
#
#   bash bench/run_quant_bench.sh [--shape smollm2-135m|llama-3.2-1b] [--repeats N] [--steps S]
#                                 [--batch B] [--seq T] [--variants LIST] [--cache DIR] [--build DIR]
#
#   smollm2-135m (default)  SmolLM2-135M shape (make_bench_model.py), batch 4 x seq 128, 3 steps,
#                           variants f32,bf16,q8_0,q4_0,nf4,hf-f32,hf-nf4, 2 repeats
#   llama-3.2-1b            the shape of tests/data/llama-3.2-1b-config.json, random weights,
#                           batch 1 x seq 128, 2 steps, variants f32,nf4,q4_0,hf-f32,hf-nf4,
#                           no validation (use --repeats 1 where time is short: hf-nf4 is slow)
#                           (about 5 GB of f32 weights: check `free -g` first, run it alone)
#
# Every run is its own process; peak RSS is /usr/bin/time's maximum resident set (the whole
# process: for the peers that includes importing torch, about 0.8 GB). peft.c runs
# `peft train --quantize q8_0|q4_0|nf4` (or --bf16, or plain f32); the peers run bench/hf_peer.py
# (--quantize nf4: bitsandbytes Linear4bit, nf4, double quant, f32 compute). Same random-weight
# model files, same rows, same hyper-parameters (LoRA r16 alpha 32 all-linear, AdamW lr 1e-3
# constant, no clipping, no weight decay, seed 0).
# Data: real text, Tiny Shakespeare (../shared/data/tinyshakespeare/input.txt) tokenized with the
# Llama 2 tokenizer (smollm2-135m: vocab 49152 > its 32000 ids) or the Llama 3 one (llama-3.2-1b,
# vocab 128256): the training file holds exactly B windows of T tokens, so every step trains on
# the same batch on every side (checked: step 1's loss, B = 0, i.e. the base model, must agree);
# the validation file is the text after it (4 windows).
# tokens/s = B*T / median step time of steps 2..S (step 1 warms up); the table shows the median
# over the repeats. Validation loss (first repeat only: the runs are deterministic) of every
# adapter, by one evaluator, `peft eval` on the held-out windows: on the f32 model (val_f32) and
# on the base quantized as it trained (val_q: nf4/q4_0/q8_0 through peft.c's kernels; the
# hf-nf4 adapter on peft.c's nf4, bitsandbytes-identical codes); val_peer is the peer's own
# evaluation (hf-nf4: on bitsandbytes' Linear4bit). On random weights (llama-3.2-1b) the loss
# says nothing about quality: that shape measures memory and speed only, and skips validation
# (a forward of 1B parameters per evaluation).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFT_PYTHON:-$ROOT/.venv/bin/python}"
BUILD="${PEFT_BUILD:-$ROOT/build}"
CACHE="${PEFT_BENCH_CACHE:-/tmp/peft-bench-models}"
SHARED="${PEFT_SHARED:-$ROOT/../shared}"
SHAPE=smollm2-135m
REPEATS=2
STEPS="" BATCH="" SEQ="" VARIANTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) SHAPE="$2"; shift ;;
    --repeats) REPEATS="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --batch) BATCH="$2"; shift ;;
    --seq) SEQ="$2"; shift ;;
    --variants) VARIANTS="$2"; shift ;;
    --cache) CACHE="$2"; shift ;;
    --build) BUILD="$2"; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$SHAPE" in
  smollm2-135m) : "${STEPS:=3}" "${BATCH:=4}" "${SEQ:=128}" "${VARIANTS:=f32,bf16,q8_0,q4_0,nf4,hf-f32,hf-nf4}"; TOKDIR=llama2; VAL=1 ;;
  llama-3.2-1b) : "${STEPS:=2}" "${BATCH:=1}" "${SEQ:=128}" "${VARIANTS:=f32,nf4,q4_0,hf-f32,hf-nf4}"; TOKDIR=llama3; VAL=0 ;;
  *) echo "unknown shape $SHAPE" >&2; exit 2 ;;
esac
TEXT="$SHARED/data/tinyshakespeare/input.txt"
[ -f "$TEXT" ] && [ -f "$SHARED/tokenizers/$TOKDIR/tokenizer.json" ] ||
  { echo "run_quant_bench: $SHARED lacks tinyshakespeare or tokenizers/$TOKDIR (set PEFT_SHARED)" >&2; exit 1; }
"$PY" -c 'import peft, torch, transformers, bitsandbytes, tokenizers' 2>/dev/null ||
  { echo "run_quant_bench: $PY cannot import torch, transformers, peft, bitsandbytes, tokenizers (make venv)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RES="$WORK/results.jsonl"

echo "== environment"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
     "flags:$(grep -m1 -o -w -e avx2 -e avx512f -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "memory: $(free -g | awk '/^Mem/ {print $2 " GiB total, " $7 " GiB available"}'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== build"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null; fi
cmake --build "$BUILD" --target peft_cli -j "$(nproc)" >/dev/null
VERSION="$("$BUILD/peft" --version)"
echo "$VERSION"
echo "$VERSION" | grep -q -- "--bf16 AVX512" ||
  echo "note: no AVX512-BF16 here: peft.c --bf16 runs its emulated (widen to f32, sgemm) path, slower than f32"
# The peers get peft.c's runtime settings (OMP_WAIT_POLICY=PASSIVE, ...), as run_train_bench.sh.
cmake --build "$BUILD" --target bench_train -j "$(nproc)" >/dev/null
eval "export $("$BUILD/bench_train" --runtime)"
THREADS="${OMP_NUM_THREADS:-$(nproc)}"

echo "== model ($SHAPE, random weights) and data"
if [ "$SHAPE" = smollm2-135m ]; then
  BASE="$("$PY" "$ROOT/bench/make_bench_model.py" --shape smollm2-135m --out "$CACHE")"
else
  BASE="$CACHE/llama-3.2-1b"
  if [ ! -f "$BASE/model.safetensors" ]; then
    "$PY" - "$ROOT/tests/data/llama-3.2-1b-config.json" "$BASE" <<'EOF'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig.from_json_file(sys.argv[1])
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(sys.argv[2], max_shard_size="20GB")
EOF
  fi
fi
# The model directory: the random checkpoint plus a real tokenizer (links, nothing copied).
MODEL="$WORK/model"
mkdir -p "$MODEL"
ln -s "$BASE/config.json" "$BASE/model.safetensors" "$MODEL/"
ln -s "$SHARED/tokenizers/$TOKDIR/tokenizer.json" "$SHARED/tokenizers/$TOKDIR/tokenizer_config.json" "$MODEL/"
echo "$BASE + tokenizers/$TOKDIR"
# train.txt: the longest run of whole lines whose tokens (BOS + text + EOS) fill exactly B
# windows of T; val.txt: the lines after it, up to 4 windows.
"$PY" - "$MODEL" "$TEXT" "$BATCH" "$SEQ" "$WORK" <<'EOF'
import sys
from tokenizers import Tokenizer
model, text, B, T, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tok = Tokenizer.from_file(model + "/tokenizer.json")
lines = open(text, encoding="utf-8").read().splitlines(keepends=True)
def fill(start, limit):
    k = start
    while k < len(lines) and len(tok.encode("".join(lines[start:k + 1])).ids) + 1 <= limit:
        k += 1
    return k
k = fill(0, B * T)
n = len(tok.encode("".join(lines[:k])).ids) + 1
assert (B - 1) * T < n <= B * T, "training text does not make exactly %d windows" % B
j = fill(k, 4 * T + 1)
open(work + "/train.txt", "w", encoding="utf-8").write("".join(lines[:k]))
open(work + "/val.txt", "w", encoding="utf-8").write("".join(lines[k:j]))
print("train: lines 1-%d, %d tokens with BOS/EOS = %d windows of %d; validation: lines %d-%d, %d tokens"
      % (k, n, B, T, k + 1, j, len(tok.encode("".join(lines[k:j])).ids)))
EOF

# peft eval's mean loss of adapter $1 on val.txt, on the base quantized as $2 (f32: none)
val_loss() {
  local q=()
  [ "$2" = f32 ] || q=(--quantize "$2")
  "$BUILD/peft" eval --model "$MODEL" --data "$WORK/val.txt" --adapter "$1" --seq-len "$SEQ" --batch 4 "${q[@]}" |
    awk '/^loss/ {print $2}'
}
# one run of variant $1, repeat $2: appends a JSON line to $RES
run_variant() {
  local v="$1" r="$2" out="$WORK/$1-$2" tm="$WORK/time"
  echo "== $v repeat $r (load $(cut -d' ' -f1 /proc/loadavg), $(date +%T))"
  if [[ "$v" == hf-* ]]; then
    local q=()
    [ "$v" = hf-f32 ] || q=(--quantize "${v#hf-}")
    [ "$VAL" = 0 ] || q+=(--val-data "$WORK/val.txt")
    /usr/bin/time -o "$tm" -f "%M %e" "$PY" "$ROOT/bench/hf_peer.py" --model "$MODEL" --dtype f32 "${q[@]}" \
      --data "$WORK/train.txt" --save "$out" --batch "$BATCH" --seq "$SEQ" \
      --steps "$STEPS" --warmup-steps 0 --lr 1e-3 --threads "$THREADS" \
      2> >(grep --line-buffered -e '^step' -e 'Error' -e 'error' | sed 's/^/   /' >&2) > "$WORK/peer.json"
    tail -1 "$WORK/peer.json"
  else
    local q=()
    case "$v" in f32) q=(--precision f32) ;; bf16) q=(--bf16 --allow-emulated) ;; *) q=(--quantize "$v") ;; esac
    /usr/bin/time -o "$tm" -f "%M %e" "$BUILD/peft" train --model "$MODEL" --data "$WORK/train.txt" --val-fraction 0 \
      --out "$out" --target all-linear --rank 16 --alpha 32 --lr 1e-3 --schedule constant --warmup 0 --clip 0 \
      --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" --seed 0 --no-progress "${q[@]}" 2>&1 | sed 's/^/   /'
    grep '"loss"' "$out/train_log.jsonl" | sed 's/^/   /'
  fi
  local vf="" vq="" rss wall
  read -r rss wall < "$tm"
  if [ "$r" = 1 ] && [ "$VAL" = 1 ]; then
    vf="$(val_loss "$out" f32)"
    case "$v" in f32|bf16|hf-f32) vq="" ;; hf-*) vq="$(val_loss "$out" "${v#hf-}")" ;; *) vq="$(val_loss "$out" "$v")" ;; esac
  fi
  "$PY" - "$v" "$r" "$out" "$rss" "$wall" "${vf:-}" "${vq:-}" "$WORK/peer.json" "$BATCH" "$SEQ" >> "$RES" <<'EOF'
import json, statistics, sys
v, r, out, rss, wall, vf, vq, peer, B, T = sys.argv[1:]
if v.startswith("hf-"):
    p = json.loads(open(peer).read().splitlines()[-1])
    steps, first, last, vpeer = p["step_times_s"], p["first_loss"], p["last_loss"], p["val_loss"]
else:
    log = [json.loads(l) for l in open(out + "/train_log.jsonl") if '"loss"' in l]
    steps, first, last, vpeer = [s["step_s"] for s in log], log[0]["loss"], log[-1]["loss"], None
timed = steps[1:] or steps
num = lambda s: float(s) if s else None
print(json.dumps({"variant": v, "repeat": int(r), "tokens_per_s": int(B) * int(T) / statistics.median(timed),
                  "step_s": steps, "peak_rss_mb": int(rss) / 1024, "wall_s": float(wall), "first_loss": first,
                  "last_loss": last, "val_f32": num(vf), "val_q": num(vq), "val_peer": vpeer}))
EOF
  tail -1 "$RES"
}

IFS=, read -r -a VLIST <<< "$VARIANTS"
for r in $(seq 1 "$REPEATS"); do
  for v in "${VLIST[@]}"; do run_variant "$v" "$r"; done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== results: shape $SHAPE (random weights), batch $BATCH x seq $SEQ, LoRA r16 all-linear, AdamW lr 1e-3;" \
     "$STEPS steps (tokens/s over steps 2..$STEPS), median of $REPEATS repeats"
"$PY" - "$RES" "$SHAPE" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["variant"] for r in rows))
med = {}
print("%-8s %10s %10s %11s %11s %10s %10s %10s %s" % ("variant", "tokens/s", "rss_MB", "step1_loss", "last_loss",
      "val_f32", "val_q", "val_peer", "tokens/s per repeat"))
fmt = lambda x: "-" if x is None else "%.4f" % x
for n in names:
    rs = [r for r in rows if r["variant"] == n]
    first = rs[0]
    med[n] = (statistics.median(r["tokens_per_s"] for r in rs), statistics.median(r["peak_rss_mb"] for r in rs))
    print("%-8s %10.2f %10.1f %11.5f %11.5f %10s %10s %10s %s" % (n, med[n][0], med[n][1], first["first_loss"],
          first["last_loss"], fmt(first["val_f32"]), fmt(first["val_q"]), fmt(first["val_peer"]),
          " ".join("%.2f" % r["tokens_per_s"] for r in rs)))
if sys.argv[2] != "smollm2-135m":
    print("(random weights: the losses only show that every side trains the same rows, not model quality)")
peers = [n for n in names if n.startswith("hf-")]
for c in names:
    if c.startswith("hf-"):
        continue
    for t in peers:
        print("ratio %s / %s: tokens/s x%.2f, peak RSS x%.2f" % (c, t, med[c][0] / med[t][0], med[c][1] / med[t][1]))
EOF
