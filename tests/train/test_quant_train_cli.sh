#!/usr/bin/env bash
# `peft train --quantize nf4|q8_0|q4_0` end to end on a real model with its tokenizer
# (../shared/models/stories260K-gguf/stories260K.gguf, Karpathy's TinyStories 260K, with the
# tokenizer it embeds) on ../shared/data/tinyshakespeare (its first 60 KB), then the saved
# adapter on the UNQUANTIZED model (QLoRA adapters are plain LoRA):
#  1. training on the quantized base writes PEFT's LORA adapter and lowers the held-out loss by
#     more than 10 %; the sites whose in_features (down_proj: 172) is not a multiple of the
#     block stay f32, and the CLI says how many (5 of 35);
#  2. `peft eval --adapter` loads it on the f32 model, with a loss more than 10 % below the f32
#     base's, and within 3 % of the loss on the quantized base it was trained on.
# The numerics of the quantized base are checked against their oracles elsewhere
# (tests/gguf/test_quant_ggml.py, tests/hf/test_quant_bnb.py, tests/hf/test_qlora_bnb.py).
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
SRC=${PEFT_SRC:?PEFT_SRC not set}
SHARED=${PEFT_SHARED:-$SRC/../shared}
MODEL="$SHARED/models/stories260K-gguf/stories260K.gguf"
TEXT="$SHARED/data/tinyshakespeare/input.txt"
for f in "$MODEL" "$TEXT"; do [ -f "$f" ] || { echo "SKIP: $f missing"; exit 77; }; done
W=$(mktemp -d /tmp/peft_quant_train.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }
loss_of() { sed -n 's/^loss[[:space:]]*\([0-9.]*\) nats\/token.*/\1/p' "$1"; }
below() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { exit !(a < b * f) }'; }  # a < f * b

head -c 60000 "$TEXT" > "$W/train.txt"
tail -c 20000 "$TEXT" > "$W/heldout.txt"  # the play's end: text the adapter never saw
"$BIN" eval --model "$MODEL" --data "$W/heldout.txt" --seq-len 64 > "$W/base.txt" 2>&1 || bad "base eval: $(tail -1 "$W/base.txt")"
base=$(loss_of "$W/base.txt")
for q in nf4 q8_0 q4_0; do
    out="$W/$q"
    if ! "$BIN" train --model "$MODEL" --data "$W/train.txt" --out "$out" --target all-linear --rank 8 --alpha 16 --lr 5e-3 \
        --steps 30 --batch 4 --seq-len 64 --eval-every 30 --seed 1 --no-progress --quantize "$q" > "$out.txt" 2>&1; then
        bad "$q: train failed: $(tail -2 "$out.txt")"
        continue
    fi
    grep -q '"peft_type":[[:space:]]*"LORA"' "$out/adapter_config.json" && ok "$q: PEFT LORA adapter written" || bad "$q: adapter config"
    grep -q "note: 5 of 35 linear layers stay f32" "$out.txt" && ok "$q: the 5 down_proj (172 inputs) stay f32" ||
        bad "$q: no note on the f32 sites: $(grep note "$out.txt")"
    first=$(grep -m1 val_loss "$out/train_log.jsonl" | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
    last=$(grep val_loss "$out/train_log.jsonl" | tail -1 | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
    below "$last" "$first" 0.9 && ok "$q: validation loss on the quantized base $first -> $last" || bad "$q: validation loss $first -> $last"
    "$BIN" eval --model "$MODEL" --data "$W/heldout.txt" --seq-len 64 --adapter "$out" > "$out.f32.txt" 2>&1 ||
        bad "$q: eval --adapter on the f32 model: $(tail -1 "$out.f32.txt")"
    "$BIN" eval --model "$MODEL" --data "$W/heldout.txt" --seq-len 64 --adapter "$out" --quantize "$q" > "$out.q.txt" 2>&1 ||
        bad "$q: eval --adapter --quantize: $(tail -1 "$out.q.txt")"
    f32=$(loss_of "$out.f32.txt") ql=$(loss_of "$out.q.txt")
    if [ -n "$f32" ] && [ -n "$ql" ] && [ -n "$base" ]; then
        below "$f32" "$base" 0.9 && ok "$q: adapter on the f32 model: held-out loss $base -> $f32" || bad "$q: f32 base $base, with adapter $f32"
        awk -v a="$f32" -v b="$ql" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.03 * b) }' &&
            ok "$q: f32 model $f32 vs quantized $ql (within 3 %)" || bad "$q: f32 model $f32 vs quantized $ql"
    else
        bad "$q: no loss printed (base '$base', f32 '$f32', quantized '$ql')"
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
