#!/usr/bin/env bash
# `make demo`: fine-tune the embedded demo model (models/demo, a small Llama pretrained on Tiny
# Shakespeare) with LoRA on a task it cannot do — name the last word of a list
# (data/demo) — and show samples, validation loss and exact-match accuracy before and after.
set -euo pipefail
BIN=${1:-build/peft}
MODEL=models/demo
OUT=${DEMO_OUT:-out/demo}
VAL=data/demo/val.jsonl
N=${DEMO_SAMPLES:-20}

field() { # field NAME LINE: a string field of one JSONL record, escapes expanded
    printf '%b' "$(printf '%s' "$2" | sed -E "s/.*\"$1\": \"(([^\"\\\\]|\\\\.)*)\".*/\\1/")"
}

accuracy() { # accuracy [--adapter DIR]: exact-match greedy completions on the first N val rows
    local hits=0 i=0 line prompt want got
    while IFS= read -r line && [ $i -lt "$N" ]; do
        prompt=$(field prompt "$line")
        want=$(field completion "$line")
        got=$("$BIN" generate --model "$MODEL" "$@" --prompt "$prompt" --max-new 4 | tail -n +2)
        got=${got#Answer:}
        [ "$(echo "$got" | head -1)" = "$(echo "$want" | head -1)" ] && hits=$((hits + 1))
        i=$((i + 1))
    done < "$VAL"
    echo "$hits/$i"
}

samples() {
    local line
    head -3 "$VAL" | while IFS= read -r line; do
        printf '  %s' "$("$BIN" generate --model "$MODEL" "$@" --prompt "$(field prompt "$line")" --max-new 6 | tr '\n' ' ')"
        printf '   (expected:%s)\n' "$(field completion "$line" | tr -d '\n')"
    done
}

echo "== the model"
"$BIN" inspect --model "$MODEL" | sed -n '1,4p;/^parameters/p'
echo
echo "== before fine-tuning (the base model continues in Shakespeare's manner)"
samples
before=$(accuracy)
echo "  exact match on $N validation prompts: $before"
echo
echo "== LoRA fine-tuning: r=8 on all q/k/v/o/gate/up/down projections, 300 steps"
rm -rf "$OUT"
"$BIN" train --model "$MODEL" --data data/demo/train.jsonl --val-data "$VAL" --out "$OUT" \
    --target all-linear --rank 8 --alpha 16 --lr 3e-3 --steps 300 --batch 8 --seq-len 24 --no-pack \
    --warmup 10 --eval-every 100 --seed 42
echo
echo "== after fine-tuning"
samples --adapter "$OUT"
after=$(accuracy --adapter "$OUT")
echo "  exact match on $N validation prompts: $before -> $after"
echo
echo "adapter (HF PEFT format): $OUT/adapter_config.json, $OUT/adapter_model.safetensors"
echo "training log: $OUT/train_log.jsonl, loss curve: $OUT/loss.svg"
