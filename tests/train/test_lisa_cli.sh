#!/usr/bin/env bash
# `peft train --method lisa` end to end on the embedded demo model (4 layers), gamma 1, K 2:
#  1. the output directory is a Hugging Face checkpoint (config.json, model.safetensors, the
#     tokenizer files; no adapter files) that `peft eval --model` loads, and the log names the
#     layers of each period, switching every K updates;
#  2. runs killed inside the checkpoint write of update N (a preloaded fsync() sends SIGKILL)
#     and resumed give a model.safetensors byte-identical to the uninterrupted run, for resumes
#     mid-period and at a period boundary, after layers trained earlier were frozen again;
#  3. --bf16, --target and --out equal to --model are refused with a message.
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
SRC=${PEFT_SRC:?PEFT_SRC not set}
MODEL="$SRC/models/demo"
[ -f "$MODEL/model.safetensors" ] || { echo "SKIP: $MODEL/model.safetensors missing"; exit 77; }
command -v cc > /dev/null || { echo "SKIP: no C compiler for the fsync fault injector"; exit 77; }
W=$(mktemp -d /tmp/peft_lisa_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }

ARGS=(--model "$MODEL" --data "$SRC/data/demo/train.jsonl" --method lisa --lisa-activated-layers 1 --lisa-interval-steps 2
      --steps 6 --batch 4 --seq-len 32 --lr 1e-3 --seed 3 --no-progress)

"$BIN" train "${ARGS[@]}" --out "$W/full" > "$W/full.txt" 2>&1 || bad "uninterrupted run failed: $(tail -2 "$W/full.txt")"
for f in config.json model.safetensors tokenizer.json train_log.jsonl checkpoint.safetensors; do
    [ -s "$W/full/$f" ] || bad "missing $f"
done
[ ! -e "$W/full/adapter_config.json" ] && ok "the output is a model (config.json + model.safetensors), no adapter files" || bad "adapter_config.json written"
cmp -s "$MODEL/config.json" "$W/full/config.json" && ok "config.json copied from the base" || bad "config.json differs"
"$BIN" eval --model "$W/full" --data "$SRC/data/demo/val.jsonl" --seq-len 32 > "$W/eval.txt" 2>&1 \
    && ok "peft eval --model loads the fine-tuned model ($(grep loss "$W/eval.txt"))" || bad "eval of the output: $(tail -1 "$W/eval.txt")"
cmp -s "$MODEL/model.safetensors" "$W/full/model.safetensors" && bad "model.safetensors equals the base" || ok "the weights differ from the base"
switches=$(grep -o '"step":[0-9]*,"active_layers":\[[0-9]\]' "$W/full/train_log.jsonl" | sed 's/"step":\([0-9]*\).*/\1/' | tr '\n' ' ')
periods=$(grep -o '"active_layers":\[[0-9]\]' "$W/full/train_log.jsonl" | tr -d '\n')
[ "$switches" = "1 3 5 " ] && ok "layers drawn before updates $switches: $periods" || bad "layer switches before updates '$switches'"
distinct=$(grep -o '"active_layers":\[[0-9]\]' "$W/full/train_log.jsonl" | sort -u | wc -l)
[ "$distinct" -ge 2 ] || bad "seed 3 draws one layer in every period: the resume test below would not cover frozen-again layers"

cc -shared -fPIC -o "$W/kill_on_fsync.so" "$SRC/tests/train/kill_on_fsync.c"
# With --save-every 1 the Nth fsync is the checkpoint of update N: killed there, the run resumes
# from update N - 1 (N - 1 = 2 and 4 are period boundaries, 1 and 3 are mid-period).
for at in 2 3 4 5; do
    out="$W/kill$at"
    ( LD_PRELOAD="$W/kill_on_fsync.so" KILL_AT_FSYNC=$at ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
        exec "$BIN" train "${ARGS[@]}" --out "$out" --save-every 1 ) > /dev/null 2>&1
    rc=$?
    "$BIN" train "${ARGS[@]}" --out "$out" --save-every 1 --resume > "$out.txt" 2>&1
    resumed=$(grep -o 'resuming from .* at step [0-9]*' "$out.txt" | sed 's/.* //')
    if [ $rc -eq 137 ] && [ "$resumed" = $((at - 1)) ] && cmp -s "$W/full/model.safetensors" "$out/model.safetensors"; then
        ok "killed in the checkpoint of update $at, resumed at update $resumed: identical model.safetensors"
    else
        bad "kill at fsync $at: rc=$rc resumed at '$resumed', model $(cmp -s "$W/full/model.safetensors" "$out/model.safetensors" && echo same || echo DIFFERS)"
    fi
done

"$BIN" train "${ARGS[@]}" --out "$W/b" --bf16 > "$W/b.txt" 2>&1
[ $? -eq 2 ] && grep -q "no --bf16" "$W/b.txt" && ok "--bf16 refused" || bad "--bf16: $(cat "$W/b.txt")"
"$BIN" train "${ARGS[@]}" --out "$W/t" --target q_proj > "$W/t.txt" 2>&1
[ $? -eq 2 ] && grep -q "no --target other than all-linear" "$W/t.txt" && ok "--target refused" || bad "--target: $(cat "$W/t.txt")"
"$BIN" train "${ARGS[@]}" --out "$MODEL" > "$W/o.txt" 2>&1
[ $? -eq 2 ] && grep -q "must differ from --model" "$W/o.txt" && ok "--out = --model refused" || bad "--out = --model: $(cat "$W/o.txt")"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
