#!/usr/bin/env bash
# Data-parallel `peft train` under OpenMPI (src/train/dist.c), two ranks on loopback, one
# thread each, against the same binary run as one process with the same global batch
# (--batch 2 --grad-accum 4 = 8 rows per update; each rank runs 2 of the 4 micro-batches):
#  1. the adapters are byte-identical (the gradient sum is g0 + g1 + g2 + g3 in that order
#     whatever the number of ranks, see step_gradient in trainer.c), the logs hold the same
#     losses and are written once (rank 0), one banner and one summary; LISA's fine-tuned
#     model (its trained layers re-drawn every 2 updates) is byte-identical too;
#  2. a run killed mid-way and resumed under mpirun (rank 0 reads the checkpoint, sends it to
#     rank 1) gives the uninterrupted run's adapter, and a single process resumes the MPI run's
#     checkpoint to the same adapter too;
#  3. --grad-accum 3 on 2 ranks is refused; rank 0 failing mid-run (its checkpoint cannot be
#     written) stops rank 1 too, within a timeout, with a message naming rank 0.
# A peft built without MPI must refuse to run as 2 copies under mpirun: that is what this test
# checks on such a build. Skipped (77) only when mpirun is absent.
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
SRC=${PEFT_SRC:?PEFT_SRC not set}
MODEL="$SRC/models/demo"
command -v mpirun > /dev/null || { echo "SKIP: mpirun not found (Debian: openmpi-bin)"; exit 77; }
[ -f "$MODEL/model.safetensors" ] || { echo "SKIP: $MODEL/model.safetensors missing"; exit 77; }
W=$(mktemp -d /tmp/peft_mpi_train.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }

# Loopback only: TCP on lo for both the data (btl) and the runtime (oob), no shared-memory or
# UCX transport, so no other network interface is touched.
MPI=(mpirun -np 2 --oversubscribe --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
     -x OMP_NUM_THREADS=1 -x ASAN_OPTIONS -x LSAN_OPTIONS)
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
# Under AddressSanitizer (make test-asan) the leak check would report Open MPI's own unfreed
# start-up allocations: suppressed by library (lsan_openmpi.supp), full stacks so each names one.
export OMP_NUM_THREADS=1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$SRC/tests/train/lsan_openmpi.supp:print_suppressions=0"

words=(king queen night day sweet love death heaven earth blood crown sword)
for i in $(seq 0 59); do
    w=${words[$((i % 12))]} v=${words[$(((i * 7 + 3) % 12))]}
    printf '{"prompt": "Echo: %s %s\\nAnswer:", "completion": " %s %s\\n"}\n' "$w" "$v" "$w" "$v"
done > "$W/data.jsonl"
# dropout on: its masks are seeded per micro-batch, not per rank
ARGS=(--model "$MODEL" --data "$W/data.jsonl" --target all-linear --rank 4 --alpha 8 --lr 3e-3 --steps 8 --batch 2
      --grad-accum 4 --seq-len 32 --no-pack --eval-every 4 --dropout 0.1 --seed 7 --no-progress)

if ! ldd "$BIN" 2> /dev/null | grep -q libmpi; then
    timeout 120 "${MPI[@]}" "$BIN" train "${ARGS[@]}" --out "$W/nompi" > "$W/nompi.txt" 2>&1
    rc=$?
    [ $rc -ne 0 ] && grep -q "built without MPI" "$W/nompi.txt" && ok "a build without MPI refuses to train as 2 copies" \
        || bad "a build without MPI under mpirun: exit $rc, $(tail -2 "$W/nompi.txt")"
    echo "$pass passed, $fail failed (this peft has no MPI: only its refusal was checked)"
    [ $fail -eq 0 ]
    exit
fi

# 1. two ranks = one process
"$BIN" train "${ARGS[@]}" --out "$W/one" > "$W/one.txt" 2>&1 || bad "single process failed: $(tail -2 "$W/one.txt")"
timeout 300 "${MPI[@]}" "$BIN" train "${ARGS[@]}" --out "$W/two" > "$W/two.txt" 2>&1 || bad "mpirun -np 2 failed: $(tail -5 "$W/two.txt")"
cmp -s "$W/one/adapter_model.safetensors" "$W/two/adapter_model.safetensors" \
    && ok "mpirun -np 2 gives the single-process adapter byte for byte" || bad "the adapters differ"
# the log without its timings (tokens_per_s, step_s): losses, learning rates, gradient norms
strip() { sed 's/,"tokens_per_s".*/}/' "$1"; }
if [ -s "$W/two/train_log.jsonl" ] && diff <(strip "$W/one/train_log.jsonl") <(strip "$W/two/train_log.jsonl") > /dev/null; then
    ok "the MPI log has the single-process losses, gradient norms and validation losses ($(wc -l < "$W/two/train_log.jsonl") lines)"
else
    bad "the logs differ"
fi
n=$(grep -c '"step":8,"loss"' "$W/two/train_log.jsonl")
[ "$n" = 1 ] && ok "each step logged once" || bad "step 8 logged $n times"
banners=$(grep -c "trainable parameters" "$W/two.txt") summaries=$(grep -c "^steps 8" "$W/two.txt")
[ "$banners" = 1 ] && [ "$summaries" = 1 ] && ok "one banner and one summary (rank 0 only)" \
    || bad "$banners banners, $summaries summaries: did both processes run as rank 0?"
ls "$W/two" | grep -q '\.tmp' && bad "temporaries left in the output: $(ls "$W/two")" || ok "no temporary left"
# LISA: the trained layers change every 2 updates (begin_step, the same on every rank)
LISA=(--model "$MODEL" --data "$W/data.jsonl" --method lisa --lisa-activated-layers 1 --lisa-interval-steps 2 --lr 1e-3
      --steps 5 --batch 2 --grad-accum 2 --seq-len 32 --seed 3 --no-progress)
"$BIN" train "${LISA[@]}" --out "$W/lisa1" > "$W/lisa1.txt" 2>&1 || bad "LISA single process failed: $(tail -2 "$W/lisa1.txt")"
timeout 300 "${MPI[@]}" "$BIN" train "${LISA[@]}" --out "$W/lisa2" > "$W/lisa2.txt" 2>&1 || bad "LISA under mpirun failed: $(tail -5 "$W/lisa2.txt")"
cmp -s "$W/lisa1/model.safetensors" "$W/lisa2/model.safetensors" && ok "LISA under mpirun -np 2: the single-process model byte for byte" \
    || bad "LISA models differ"

# 2. kill and resume under MPI
# kill_after STEP OUT ARGS...: starts an MPI run and SIGKILLs its ranks (mpirun's children)
# once STEP is logged; mpirun then ends the job.
kill_after() {
    local at=$1 out=$2
    shift 2
    "${MPI[@]}" "$BIN" train "${ARGS[@]}" "$@" --out "$out" > "$out.txt" 2>&1 &
    local pid=$!
    for _ in $(seq 1 1500); do
        grep -q "\"step\":$at,\"loss\"" "$out/train_log.jsonl" 2> /dev/null && break
        kill -0 $pid 2> /dev/null || break
        sleep 0.02
    done
    kill -9 $(pgrep -P $pid) 2> /dev/null
    wait $pid 2> /dev/null
}
kill_after 3 "$W/killed" --save-every 1
timeout 300 "${MPI[@]}" "$BIN" train "${ARGS[@]}" --save-every 1 --resume --out "$W/killed" > "$W/resumed.txt" 2>&1 \
    || bad "the MPI resume failed: $(tail -5 "$W/resumed.txt")"
at=$(sed -n 's/.*resuming from .* at step \([0-9]*\).*/\1/p' "$W/resumed.txt")
if [ -n "$at" ] && [ "$at" -lt 8 ]; then ok "the MPI run resumed at step $at"; else bad "no resume mid-run (step '$at')"; fi
cmp -s "$W/one/adapter_model.safetensors" "$W/killed/adapter_model.safetensors" \
    && ok "killed + resumed under mpirun: the uninterrupted adapter" || bad "the resumed adapter differs"
dups=$(grep '"loss"' "$W/killed/train_log.jsonl" | sed 's/,.*//' | sort | uniq -d)
[ -z "$dups" ] && ok "the resumed log has each step once" || bad "steps logged twice after resume: $dups"
# the checkpoint does not depend on the number of ranks: one process continues an MPI run
kill_after 4 "$W/cross" --save-every 3
"$BIN" train "${ARGS[@]}" --save-every 3 --resume --out "$W/cross" > "$W/cross2.txt" 2>&1 || bad "single resume of an MPI checkpoint failed"
grep -q "resuming from" "$W/cross2.txt" && cmp -s "$W/one/adapter_model.safetensors" "$W/cross/adapter_model.safetensors" \
    && ok "one process resumes the MPI run's checkpoint to the same adapter" || bad "cross-layout resume: $(tail -2 "$W/cross2.txt")"

# 3. refusals and failures: nobody hangs
timeout 120 "${MPI[@]}" "$BIN" train "${ARGS[@]}" --grad-accum 3 --out "$W/odd" > "$W/odd.txt" 2>&1
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "not a multiple of the 2 MPI ranks" "$W/odd.txt" \
    && ok "--grad-accum 3 on 2 ranks refused" || bad "--grad-accum 3: exit $rc, $(tail -2 "$W/odd.txt")"
mkdir -p "$W/fail/checkpoint.safetensors/x" # rank 0 cannot rename its checkpoint onto a directory
timeout 120 "${MPI[@]}" "$BIN" train "${ARGS[@]}" --save-every 2 --out "$W/fail" > "$W/fail.txt" 2>&1
rc=$?
# Rank 0's own message must be there and the job must end (no timeout). Rank 1 usually adds "rank 0
# of the MPI job failed", but mpirun may kill it first once rank 0 has exited: not required.
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "checkpoint.safetensors: rename failed" "$W/fail.txt" \
    && ok "rank 0 failing mid-run stops rank 1 (exit $rc)" || bad "rank 0 failure: exit $rc, $(tail -3 "$W/fail.txt")"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
