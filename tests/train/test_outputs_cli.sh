#!/usr/bin/env bash
# Hostile files and interrupted writes around `peft train` / `peft eval` (issue 13), on the
# embedded demo model; the oracles are the files themselves, read with Python's json and a
# safetensors header parser written here (stdlib only):
#  1. a kill at EVERY fsync of a save (tests/train/kill_on_fsync.c) leaves an adapter directory
#     whose adapter_config.json matches its adapter_model.safetensors (all old or all new), and
#     the next run removes what the killed one left (temporaries, staged directories);
#  2. a second run on the same --out fails at once while the first holds it;
#  3. a run that fails before its first update keeps the previous run's train_log.jsonl;
#  4. --resume refuses every changed setting (method, alpha, dropout, targets, data), naming it;
#  5. a checkpoint whose step metadata is negative, not a number, too large, or whose tensors
#     hold NaN is refused naming the field (a negative step used to read out of bounds);
#  6. an adapter with a NaN tensor is refused by eval;
#  7. eval reads .jsonl / .json records as train does.
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
SRC=${PEFT_SRC:?PEFT_SRC not set}
PY=${PEFT_PYTHON:-python3}
MODEL="$SRC/models/demo"
[ -f "$MODEL/model.safetensors" ] || { echo "SKIP: $MODEL/model.safetensors missing"; exit 77; }
command -v "$PY" > /dev/null || { echo "SKIP: no python for the file oracles"; exit 77; }
command -v cc > /dev/null || { echo "SKIP: no C compiler for the fsync fault injector"; exit 77; }
W=$(mktemp -d /tmp/peft_outputs_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }

for i in $(seq 0 39); do printf '{"prompt": "Echo: w%d\\nAnswer:", "completion": " w%d\\n"}\n' $i $i; done > "$W/data.jsonl"
ARGS=(--model "$MODEL" --data "$W/data.jsonl" --target all-linear --lr 3e-3 --steps 2 --batch 4 --seq-len 32 --seed 7
      --no-progress)
"$BIN" train "${ARGS[@]}" --rank 4 --alpha 8 --out "$W/base" > "$W/base.txt" 2>&1 || bad "base run: $(tail -1 "$W/base.txt")"

# r of adapter_config.json, and whether every lora_A / lora_B in the safetensors agrees with it.
cat > "$W/consistent.py" << 'PYEOF'
import json, struct, sys
d = sys.argv[1]
r = json.load(open(d + "/adapter_config.json"))["r"]
with open(d + "/adapter_model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
shapes = [v["shape"] for k, v in hdr.items() if k != "__metadata__"]
good = all((s[0] == r) if "lora_A" in k else (s[1] == r) for k, s in ((k, v["shape"]) for k, v in hdr.items() if "lora_" in k))
print(r if good and shapes else "inconsistent")
PYEOF

# Poisons a safetensors file: metadata FIELD = VALUE, or (FIELD nan) the first element of
# tensor VALUE (x: the first parameter tensor) becomes NaN, or (FIELD big) all of it 3e38.
cat > "$W/poison.py" << 'PYEOF'
import json, struct, sys
path, what, value = sys.argv[1:4]
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
hdr = json.loads(b[8:8 + n])
data = bytearray(b[8 + n:])
if what in ("nan", "big"):
    k = value if value in hdr else sorted(k for k in hdr if k != "__metadata__" and not k.startswith("adamw."))[0]
    a, b = hdr[k]["data_offsets"]
    data[a:a + 4 if what == "nan" else b] = struct.pack("<f", float("nan")) if what == "nan" else struct.pack("<f", 3e38) * ((b - a) // 4)
else:
    hdr["__metadata__"][what] = value
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))
PYEOF

# 1. A kill at every fsync of a run that saves a rank-8 adapter over the rank-4 one.
cc -shared -fPIC -o "$W/kill_on_fsync.so" "$SRC/tests/train/kill_on_fsync.c"
old=0 new=0 points=0
for at in $(seq 1 12); do
    d="$W/k$at"
    cp -a "$W/base" "$d"
    ( LD_PRELOAD="$W/kill_on_fsync.so" KILL_AT_FSYNC=$at ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" \
      exec "$BIN" train "${ARGS[@]}" --rank 8 --alpha 16 --out "$d" ) > "$W/k$at.txt" 2>&1
    rc=$?
    [ $rc -eq 0 ] && break # no fsync left to kill at: every point was covered
    points=$((points + 1))
    r=$("$PY" "$W/consistent.py" "$d" 2>&1)
    if [ "$r" = 4 ] && cmp -s "$W/base/adapter_model.safetensors" "$d/adapter_model.safetensors"; then old=$((old + 1))
    elif [ "$r" = 8 ]; then new=$((new + 1))
    else bad "kill at fsync #$at (rc $rc): adapter directory inconsistent: $r"; fi
    # the next run (the base settings) cleans what the killed one left and ends consistent
    "$BIN" train "${ARGS[@]}" --rank 4 --alpha 8 --out "$d" > "$W/k$at.next.txt" 2>&1 || bad "run after kill #$at: $(tail -1 "$W/k$at.next.txt")"
    left=$(ls -a "$d" | grep '\.tmp\.'; ls "$W" | grep "^k$at\.peft-stage\.")
    [ -z "$left" ] || bad "kill at fsync #$at: left behind after the next run: $left"
done
[ $rc -eq 0 ] && [ $old -ge 1 ] && [ $new -ge 1 ] && [ $fail -eq 0 ] \
    && ok "SIGKILL at each of $points fsyncs: config and tensors always match ($old old, $new new), leftovers cleaned" \
    || bad "kill points: rc $rc, $points points, $old old, $new new"

# 2. One run at a time per --out.
"$BIN" train "${ARGS[@]}" --rank 4 --steps 100000 --out "$W/busy" > /dev/null 2>&1 &
first=$!
for i in $(seq 100); do [ -s "$W/busy/.peft.lock" ] && break; sleep 0.1; done
timeout 20 "$BIN" train "${ARGS[@]}" --rank 4 --out "$W/busy" > "$W/busy.txt" 2>&1
rc=$?
kill -9 $first 2> /dev/null
wait $first 2> /dev/null
[ $rc -eq 1 ] && grep -q "in use by another peft run (pid $first)" "$W/busy.txt" && ok "a second run on a busy --out fails at once" \
    || bad "busy --out: rc $rc $(tail -1 "$W/busy.txt")"

# 3. A run that stops at its first update keeps the previous log: a copy of the model whose
#    final norm is 3e38 (finite, so the model loads) makes the first loss non-finite.
cp -a "$W/base" "$W/keeplog"
cp -a "$MODEL" "$W/nanmodel"
"$PY" "$W/poison.py" "$W/nanmodel/model.safetensors" big model.norm.weight
before=$(sha256sum < "$W/keeplog/train_log.jsonl")
"$BIN" train "${ARGS[@]}" --model "$W/nanmodel" --rank 4 --out "$W/keeplog" > "$W/keeplog.txt" 2>&1
rc=$?
[ $rc -eq 1 ] && [ "$before" = "$(sha256sum < "$W/keeplog/train_log.jsonl")" ] && ! ls -a "$W/keeplog" | grep -q '\.tmp\.' \
    && ok "a run that cannot take a step leaves the previous train_log.jsonl" || bad "log kept: rc $rc $(tail -1 "$W/keeplog.txt")"

# 4. --resume with a changed setting is refused, naming it.
sed 's/w3\\n"}/w4\\n"}/' "$W/data.jsonl" > "$W/other.jsonl"
while read -r name opts; do
    cp -a "$W/base" "$W/res"
    # shellcheck disable=SC2086
    "$BIN" train "${ARGS[@]}" --rank 4 --alpha 8 $opts --resume --out "$W/res" > "$W/res.txt" 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -q "cannot resume: the checkpoint's run has $name = " "$W/res.txt" && ok "--resume with $opts refused naming $name" \
        || bad "--resume $opts: rc $rc $(tail -1 "$W/res.txt")"
    rm -rf "$W/res"
done << LIST
method --method pissa
dropout --dropout 0.1
target_modules --target q_proj,v_proj
data --data $W/other.jsonl
LIST
cp -a "$W/base" "$W/res"
"$BIN" train "${ARGS[@]}" --rank 4 --alpha 8 --resume --out "$W/res" > "$W/res.txt" 2>&1 && grep -q "resuming from" "$W/res.txt" \
    && ok "--resume with the same settings resumes" || bad "same-settings resume: $(tail -1 "$W/res.txt")"

# 5. Hostile checkpoints: metadata and tensors are validated before use.
while read -r field value want; do
    cp -a "$W/base" "$W/hc"
    "$PY" "$W/poison.py" "$W/hc/checkpoint.safetensors" "$field" "$value"
    "$BIN" train "${ARGS[@]}" --rank 4 --alpha 8 --resume --out "$W/hc" > "$W/hc.txt" 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -qF -- "$want" "$W/hc.txt" && ok "checkpoint with $field = $value refused" \
        || bad "checkpoint $field=$value: rc $rc $(tail -1 "$W/hc.txt")"
    rm -rf "$W/hc"
done << 'LIST'
step -5 metadata "step" = "-5" is not an integer in [0, 2]
step 3 metadata "step" = "3" is not an integer in [0, 2]
step 1x metadata "step" = "1x"
step 99999999999999999999 metadata "step" = "99999999999999999999"
adamw_step -1 metadata "adamw_step" = "-1"
format peft.c-checkpoint-1 an older peft.c's
nan x holds nan at element 0 (not finite)
LIST

# 6. An adapter with NaN in a tensor is refused on load.
cp -a "$W/base" "$W/nanad"
"$PY" "$W/poison.py" "$W/nanad/adapter_model.safetensors" nan x
"$BIN" eval --model "$MODEL" --adapter "$W/nanad" --data "$W/data.jsonl" --seq-len 32 > "$W/nanad.txt" 2>&1
[ $? -ne 0 ] && grep -q "non-finite" "$W/nanad.txt" && ok "eval refuses an adapter with a NaN tensor" || bad "NaN adapter: $(tail -1 "$W/nanad.txt")"

# 7. eval reads JSON records as train does (not their JSON syntax as text): the JSONL file and
#    the same records as a JSON array give the same loss over all 40 examples, and the loss
#    is not the one of the file's bytes read as text.
"$PY" -c "import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])]))" "$W/data.jsonl" > "$W/data.json"
cp "$W/data.jsonl" "$W/data.txt"
ev() { "$BIN" eval --model "$MODEL" --adapter "$W/base" --data "$1" --seq-len 32 2>&1; }
l1=$(ev "$W/data.jsonl" | awk '/^loss/ {print $2}') l2=$(ev "$W/data.json" | awk '/^loss/ {print $2}')
l3=$(ev "$W/data.txt" | awk '/^loss/ {print $2}') nex=$(ev "$W/data.jsonl" | awk '/^examples/ {print $2}')
[ -n "$l1" ] && [ "$l1" = "$l2" ] && [ "$l1" != "$l3" ] && [ "$nex" = 40 ] \
    && ok "eval of records: loss $l1 over $nex examples (JSON array the same; as text $l3)" || bad "eval records: '$l1' '$l2' '$l3' '$nex'"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
