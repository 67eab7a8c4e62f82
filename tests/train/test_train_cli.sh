#!/usr/bin/env bash
# End-to-end `peft train` on the embedded demo model (models/demo):
#  1. an uninterrupted run writes a PEFT adapter, a JSONL log, an SVG curve, and lowers the
#     validation loss;
#  2. runs killed with SIGKILL at random moments (checkpoint every step) leave only complete
#     files, and resuming them gives an adapter byte-identical to the uninterrupted run;
#  3. a write that hits the file-size limit (disk full) fails with a message and leaves the
#     earlier adapter intact;
#  4. a learning rate that overflows the weights stops with a clear message, no adapter;
#  5. an empty dataset and a malformed line are refused with the file named;
#  6. CorDA: calibration on --corda-calib-data, --save-as-lora loads in peft eval, misuse refused;
#  7. --f16 / --bf16 (frozen matmuls in 16 bits; --allow-emulated: also where they run emulated): lowers the validation loss to within
#     2 % of the f32 run's, eval agrees with f32 within 1 %, both flags together are refused.
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
SRC=${PEFT_SRC:?PEFT_SRC not set}
MODEL="$SRC/models/demo"
[ -f "$MODEL/model.safetensors" ] || { echo "SKIP: $MODEL/model.safetensors missing"; exit 77; }
W=$(mktemp -d /tmp/peft_train_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }

# A small prompt/completion set: copy the word after "Echo:".
words=(king queen night day sweet love death heaven earth blood crown sword)
for i in $(seq 0 59); do
    w=${words[$((i % 12))]} v=${words[$(((i * 7 + 3) % 12))]}
    printf '{"prompt": "Echo: %s %s\\nAnswer:", "completion": " %s %s\\n"}\n' "$w" "$v" "$w" "$v"
done > "$W/data.jsonl"
ARGS=(--model "$MODEL" --data "$W/data.jsonl" --target all-linear --rank 4 --alpha 8 --lr 3e-3 --steps 8
      --batch 4 --seq-len 32 --no-pack --eval-every 4 --dropout 0.1 --seed 7 --no-progress)

"$BIN" train "${ARGS[@]}" --out "$W/full" > "$W/full.txt" 2>&1 || bad "uninterrupted run failed: $(tail -2 "$W/full.txt")"
for f in adapter_config.json adapter_model.safetensors train_log.jsonl loss.svg checkpoint.safetensors; do
    [ -s "$W/full/$f" ] || bad "missing $f"
done
grep -q '"peft_type":[[:space:]]*"LORA"' "$W/full/adapter_config.json" && ok "adapter_config.json is PEFT's LORA config" || bad "adapter config"
grep -q '<svg' "$W/full/loss.svg" && ok "loss curve written" || bad "loss.svg"
first=$(grep -m1 val_loss "$W/full/train_log.jsonl" | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
last=$(grep val_loss "$W/full/train_log.jsonl" | tail -1 | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' && ok "validation loss fell $first -> $last" || bad "validation loss $first -> $last"

# Kill -9 at random points, resume until done; the result must equal the uninterrupted run.
for trial in 1 2 3; do
    out="$W/killed$trial"
    "$BIN" train "${ARGS[@]}" --out "$out" --save-every 1 > /dev/null 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 9 + 1))"
    kill -9 "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    # Whatever exists must be complete: no temporary left behind that a reader would take.
    for f in "$out"/*.safetensors; do
        [ -e "$f" ] || continue
        head -c 8 "$f" > /dev/null || bad "unreadable $f"
    done
    for attempt in 1 2 3 4 5; do
        "$BIN" train "${ARGS[@]}" --out "$out" --save-every 1 --resume > "$out.txt" 2>&1 && break
    done
    if cmp -s "$W/full/adapter_model.safetensors" "$out/adapter_model.safetensors"; then
        ok "trial $trial: killed and resumed run gives the identical adapter"
    else
        bad "trial $trial: resumed adapter differs ($(tail -1 "$out.txt"))"
    fi
done

# SIGKILL inside an adapter write: a preloaded fsync() kills the process at the Nth call,
# after the temporary is written and before it is renamed. The earlier adapter must stay
# byte-identical (1st fsync: the new adapter_model.safetensors in the staged directory) or the
# new one must be complete (4th fsync: the parent directory's, after the staged directory was
# switched in). test_outputs_cli.sh kills at every fsync.
if command -v cc > /dev/null; then
    cc -shared -fPIC -o "$W/kill_on_fsync.so" "$SRC/tests/train/kill_on_fsync.c"
    for at in 1 4; do
        cp -r "$W/full" "$W/kw$at"
        before=$(sha256sum "$W/kw$at/adapter_model.safetensors" | cut -d' ' -f1)
        # (under AddressSanitizer the injector may precede its runtime: allow that)
        ( LD_PRELOAD="$W/kill_on_fsync.so" KILL_AT_FSYNC=$at ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" exec "$BIN" train "${ARGS[@]}" --steps 3 --out "$W/kw$at" ) \
            > /dev/null 2>&1
        rc=$?
        after=$(sha256sum "$W/kw$at/adapter_model.safetensors" | cut -d' ' -f1)
        loads=$("$BIN" eval --model "$MODEL" --adapter "$W/kw$at" --data "$W/data.jsonl" --seq-len 32 > /dev/null 2>&1 && echo yes)
        expect_same=$([ $at = 1 ] && echo yes || echo no)
        same=$([ "$before" = "$after" ] && echo yes || echo no)
        if [ $rc -eq 137 ] && [ "$loads" = yes ] && [ "$same" = "$expect_same" ]; then
            ok "SIGKILL at fsync #$at: the adapter on disk is complete ($([ "$before" = "$after" ] && echo the earlier one || echo the new one))"
        else
            bad "SIGKILL at fsync #$at: rc=$rc loads=$loads same=$same"
        fi
    done
else
    echo "SKIP part: no C compiler for the fsync fault injector"
fi

# Disk full: a file-size limit below the adapter's size; earlier outputs must survive.
cp -r "$W/full" "$W/diskfull"
before=$(sha256sum "$W/diskfull/adapter_model.safetensors" | cut -d' ' -f1)
( ulimit -f 8; trap '' XFSZ; exec "$BIN" train "${ARGS[@]}" --out "$W/diskfull" --steps 2 ) > "$W/df.txt" 2>&1
rc=$?
after=$(sha256sum "$W/diskfull/adapter_model.safetensors" | cut -d' ' -f1)
if [ $rc -eq 1 ] && grep -q "write failed\|cannot" "$W/df.txt" && [ "$before" = "$after" ]; then
    ok "disk full is reported and the earlier adapter is intact"
else
    bad "disk full: rc=$rc, adapter changed: $([ "$before" = "$after" ] && echo no || echo yes): $(tail -1 "$W/df.txt")"
fi
ls "$W/diskfull" | grep -q '\.tmp\.' && bad "temporary file left behind" || ok "no temporary file left behind"

# A learning rate that blows the weights up: a clear stop, no adapter written.
"$BIN" train "${ARGS[@]}" --out "$W/nan" --lr 1e38 --clip 0 > "$W/nan.txt" 2>&1
rc=$?
if [ $rc -eq 1 ] && grep -q "non-finite\|not finite" "$W/nan.txt" && [ ! -e "$W/nan/adapter_model.safetensors" ]; then
    ok "non-finite training stops without writing an adapter"
else
    bad "non-finite: rc=$rc $(tail -1 "$W/nan.txt")"
fi

# Bad data.
: > "$W/empty.jsonl"
"$BIN" train "${ARGS[@]}" --data "$W/empty.jsonl" --out "$W/e" > "$W/e.txt" 2>&1
[ $? -eq 1 ] && grep -q "empty.jsonl" "$W/e.txt" && ok "empty dataset refused naming the file" || bad "empty dataset: $(cat "$W/e.txt")"
{ head -3 "$W/data.jsonl"; echo '{"prompt": "x", "completion": '; } > "$W/broken.jsonl"
"$BIN" train "${ARGS[@]}" --data "$W/broken.jsonl" --out "$W/b" > "$W/b.txt" 2>&1
[ $? -eq 1 ] && grep -q "broken.jsonl:4" "$W/b.txt" && ok "malformed line refused with file:line" || bad "malformed line: $(cat "$W/b.txt")"

# CorDA: the calibration pass runs on a separate file; --save-as-lora writes a rank-2r LoRA of the
# original model that `peft eval` loads; a raw CorDA adapter is refused (no covariances there).
CARGS=(--model "$MODEL" --data "$W/data.jsonl" --target all-linear --rank 4 --alpha 8 --steps 2 --batch 4
       --seq-len 32 --no-progress --method corda_kpm)
head -20 "$W/data.jsonl" > "$W/calib.jsonl"
"$BIN" train "${CARGS[@]}" --corda-calib-data "$W/calib.jsonl" --corda-calib-batches 2 --save-as-lora --out "$W/corda" \
    > "$W/corda.txt" 2>&1 && grep -q "CorDA calibration: 2 batches of 4 rows x 32 tokens from $W/calib.jsonl" "$W/corda.txt" \
    && grep -q '"r":[[:space:]]*8' "$W/corda/adapter_config.json" && grep -q '"init_lora_weights":[[:space:]]*true' "$W/corda/adapter_config.json" \
    && "$BIN" eval --model "$MODEL" --data "$W/data.jsonl" --adapter "$W/corda" > /dev/null 2>&1 \
    && ok "corda_kpm calibrates on --corda-calib-data, saves a rank-8 LoRA that peft eval loads" || bad "corda: $(tail -2 "$W/corda.txt")"
"$BIN" train "${CARGS[@]}" --out "$W/corda_raw" > /dev/null 2>&1
"$BIN" eval --model "$MODEL" --data "$W/data.jsonl" --adapter "$W/corda_raw" > "$W/cr.txt" 2>&1
[ $? -ne 0 ] && grep -q "calibration" "$W/cr.txt" && ok "a raw CorDA adapter is refused without covariances" || bad "raw corda: $(tail -1 "$W/cr.txt")"
"$BIN" train "${ARGS[@]}" --out "$W/lc" --corda-calib-batches 2 > "$W/lc.txt" 2>&1
[ $? -eq 2 ] && grep -q "corda_ipm or corda_kpm" "$W/lc.txt" && ok "--corda-calib-batches refused for lora" || bad "calib option on lora: $(tail -1 "$W/lc.txt")"
"$BIN" train "${ARGS[@]}" --out "$W/ls" --save-as-lora > "$W/ls.txt" 2>&1
[ $? -eq 1 ] && grep -q "PiSSA and CorDA" "$W/ls.txt" && ok "--save-as-lora refused for lora" || bad "save-as-lora on lora: $(tail -1 "$W/ls.txt")"

# 16-bit compute: the same run in f16 and bf16 ends where f32 does (within their rounding).
for h in f16 bf16; do
    "$BIN" train "${ARGS[@]}" --$h --allow-emulated --out "$W/$h" > "$W/$h.txt" 2>&1 || bad "--$h run failed: $(tail -2 "$W/$h.txt")"
    hl=$(grep val_loss "$W/$h/train_log.jsonl" | tail -1 | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
    awk -v a="$last" -v b="$hl" 'BEGIN { d = (a - b) / a; exit !(d < 0.02 && d > -0.02) }' \
        && ok "--$h: final validation loss $hl vs f32 $last" || bad "--$h: final validation loss $hl vs f32 $last"
    e32=$("$BIN" eval --model "$MODEL" --data "$W/data.jsonl" --adapter "$W/full" 2>&1 | awk '/^loss/ {print $2}')
    e16=$("$BIN" eval --model "$MODEL" --data "$W/data.jsonl" --adapter "$W/full" --$h --allow-emulated 2>&1 | awk '/^loss/ {print $2}')
    awk -v a="$e32" -v b="$e16" 'BEGIN { d = (a - b) / a; exit !(a > 0 && d < 0.01 && d > -0.01) }' \
        && ok "eval --$h: loss $e16 vs f32 $e32" || bad "eval --$h: loss '$e16' vs f32 '$e32'"
done
"$BIN" train "${ARGS[@]}" --f16 --bf16 --out "$W/both" > "$W/both.txt" 2>&1
[ $? -ne 0 ] && grep -q "exclude each other" "$W/both.txt" && [ ! -e "$W/both/adapter_model.safetensors" ] \
    && ok "--f16 with --bf16 refused" || bad "--f16 --bf16: $(tail -1 "$W/both.txt")"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
