#!/usr/bin/env bash
# run.sh: build and run the libFuzzer targets of peft.c (issue 7).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 300 s each, every target (TARGETS below)
#
# Compiles the library sources (src/{core,io,kernels,tokenizer,models,methods,train}/*.c) once
# with clang -fsanitize=fuzzer-no-link,address,undefined into build-fuzz/libpeft_fuzz.a, links
# each fuzz/fuzz_<target>.c against it with -fsanitize=fuzzer,address,undefined, generates seed
# corpora from ../shared (PEFT_SHARED overrides: its models/ and tokenizers/) with fuzz/make_seeds.py, and runs each target for
# SECONDS (-max_total_time), one after the other. Everything goes under $FUZZ_OUT (default
# build-fuzz/, ignored by git):
#   build-fuzz/fuzz_<target>         the binaries
#   build-fuzz/seeds/<target>/       seeds, regenerated each run
#   build-fuzz/corpus/<target>/      the growing corpus, kept between runs
#   build-fuzz/crashes/<target>-*    reproducers (crash-*, leak-*, timeout-*)
#   build-fuzz/<target>.log          libFuzzer's output; the last stats line and the number of
#                                    executions are printed, and a summary table at the end
# Exit status: 0 if no target found anything, 1 otherwise. Reproduce a crash with
#   build-fuzz/fuzz_<target> build-fuzz/crashes/<target>-crash-...
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-300}
shift || true
TARGETS=${*:-safetensors config adapter_config tokenizer chat dataset cli_args gguf checkpoint image serve_request}
OUT=${FUZZ_OUT:-build-fuzz}
SHARED=${PEFT_SHARED:-../shared}
CC=${FUZZ_CC:-clang}
PYTHON=${PEFT_PYTHON:-python3}

if ! command -v "$CC" >/dev/null; then
    echo "fuzz/run.sh: $CC not found (libFuzzer needs clang)" >&2
    exit 77
fi
mkdir -p "$OUT/crashes" "$OUT/corpus" "$OUT/seeds"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -Wno-pass-failed"
CFLAGS="-std=gnu11 -g -O1 $SAN -fopenmp -Iinclude -Isrc -Isrc/core -Itests
        $(pkg-config --cflags libcjson libpcre2-8 openblas libpng libjpeg)"
LIBS="$(pkg-config --libs libcjson libpcre2-8 openblas libpng libjpeg) -fopenmp -lm"

# The library, instrumented for coverage but without libFuzzer's main.
echo "== building $OUT/libpeft_fuzz.a"
mkdir -p "$OUT/obj"
rm -f "$OUT"/obj/*.o "$OUT/libpeft_fuzz.a"
# shellcheck disable=SC2086
ls src/core/*.c src/io/*.c src/kernels/*.c src/tokenizer/*.c src/models/*.c src/methods/*.c src/train/*.c |
    xargs -P "$(nproc)" -I{} sh -c '$0 $1 -fsanitize=fuzzer-no-link -c "$2" -o "$3/obj/$(echo "$2" | tr / _).o"' \
        "$CC" "$CFLAGS" {} "$OUT" || exit 1
ar rcs "$OUT/libpeft_fuzz.a" "$OUT"/obj/*.o || exit 1

rm -rf "$OUT/seeds"
if [ -d "$SHARED/models" ]; then
    "$PYTHON" fuzz/make_seeds.py "$SHARED" "$OUT/seeds" || exit 1
    "$PYTHON" fuzz/gguf_seeds.py "$SHARED" "$OUT/seeds/gguf" || exit 1 # small GGUFs of every type, stories260K's header
else
    echo "fuzz/run.sh: $SHARED/models not found: starting from empty corpora" >&2
fi

status=0
summary=""
for t in $TARGETS; do
    src=fuzz/fuzz_$t.c
    bin=$OUT/fuzz_$t
    if [ ! -f "$src" ]; then
        echo "fuzz/run.sh: no $src" >&2
        exit 2
    fi
    echo "== building $bin"
    # shellcheck disable=SC2086
    $CC $CFLAGS -fsanitize=fuzzer "$src" "$OUT/libpeft_fuzz.a" $LIBS -o "$bin" || exit 1
    mkdir -p "$OUT/corpus/$t" "$OUT/seeds/$t"
    # the checkpoint seed is the target's own valid checkpoint (its set on its tiny model)
    [ "$t" = checkpoint ] && PEFT_FUZZ_WRITE_SEED="$OUT/seeds/$t/valid.safetensors" "$bin" -runs=0 > /dev/null 2>&1
    dict=()
    [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
    echo "== running $bin for ${SECONDS_EACH}s"
    "$bin" "$OUT/corpus/$t" "$OUT/seeds/$t" -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 "${dict[@]}" -artifact_prefix="$OUT/crashes/$t-" -print_final_stats=1 \
        >"$OUT/$t.log" 2>&1
    rc=$?
    grep -E "^#[0-9]+.*(DONE|pulse|NEW|REDUCE)" "$OUT/$t.log" | tail -1
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$OUT/$t.log"
    if [ $rc -ne 0 ]; then
        echo "== $t: libFuzzer exit $rc; see $OUT/$t.log and $OUT/crashes/" >&2
        grep -E "ERROR|SUMMARY|runtime error|deadly signal" "$OUT/$t.log" | head -5 >&2
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)
    summary="$summary$(printf '%-16s %8ss %14s  %s' "$t" "$SECONDS_EACH" "${execs:-?}" "$([ $rc -eq 0 ] && echo ok || echo FOUND)")\n"
done
printf '== summary\n%-16s %9s %14s  %s\n' target time executions status
printf "$summary"
exit $status
