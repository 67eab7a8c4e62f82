#!/usr/bin/env bash
# run.sh: build and run the libFuzzer targets of peft.c (issue 7).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 300 s each, targets safetensors config
#
# Builds fuzz/fuzz_<target>.c with clang -fsanitize=fuzzer,address,undefined against the
# library sources directly (src/core/*.c src/io/*.c), generates seed corpora from ../shared
# (PEFT_SHARED overrides) with fuzz/make_seeds.py, and runs each target for SECONDS
# (-max_total_time). Everything goes under $FUZZ_OUT (default build-fuzz/, ignored by git):
#   build-fuzz/fuzz_<target>         the binaries
#   build-fuzz/seeds/<target>/       seeds, regenerated each run
#   build-fuzz/corpus/<target>/      the growing corpus, kept between runs
#   build-fuzz/crashes/<target>-*    reproducers (crash-*, leak-*, timeout-*)
#   build-fuzz/<target>.log          libFuzzer's output; the last stats line is printed
# Exit status: 0 if no target found anything, 1 otherwise. Reproduce a crash with
#   build-fuzz/fuzz_<target> build-fuzz/crashes/<target>-crash-...
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-300}
shift || true
TARGETS=${*:-safetensors config}
OUT=${FUZZ_OUT:-build-fuzz}
SHARED=${PEFT_SHARED:-../shared}
CC=${FUZZ_CC:-clang}
PYTHON=${PEFT_PYTHON:-python3}

if ! command -v "$CC" >/dev/null; then
    echo "fuzz/run.sh: $CC not found (libFuzzer needs clang)" >&2
    exit 77
fi
mkdir -p "$OUT/crashes" "$OUT/corpus" "$OUT/seeds"
CFLAGS="-std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
        -Iinclude -Isrc -Isrc/core $(pkg-config --cflags libcjson)"
LIBS="$(pkg-config --libs libcjson) -lm"

rm -rf "$OUT/seeds"
if [ -d "$SHARED/models" ]; then
    "$PYTHON" fuzz/make_seeds.py "$SHARED" "$OUT/seeds" || exit 1
else
    echo "fuzz/run.sh: $SHARED/models not found: starting from empty corpora" >&2
fi

status=0
for t in $TARGETS; do
    src=fuzz/fuzz_$t.c
    bin=$OUT/fuzz_$t
    if [ ! -f "$src" ]; then
        echo "fuzz/run.sh: no $src" >&2
        exit 2
    fi
    echo "== building $bin"
    # shellcheck disable=SC2086
    $CC $CFLAGS "$src" src/core/*.c src/io/*.c $LIBS -o "$bin" || exit 1
    mkdir -p "$OUT/corpus/$t" "$OUT/seeds/$t"
    dict=fuzz/$t.dict
    echo "== running $bin for ${SECONDS_EACH}s"
    "$bin" "$OUT/corpus/$t" "$OUT/seeds/$t" -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -dict="$dict" -artifact_prefix="$OUT/crashes/$t-" -print_final_stats=1 \
        >"$OUT/$t.log" 2>&1
    rc=$?
    grep -E "^#[0-9]+.*(DONE|pulse|NEW|REDUCE)" "$OUT/$t.log" | tail -1
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$OUT/$t.log"
    if [ $rc -ne 0 ]; then
        echo "== $t: libFuzzer exit $rc; see $OUT/$t.log and $OUT/crashes/" >&2
        grep -E "ERROR|SUMMARY|runtime error|deadly signal" "$OUT/$t.log" | head -5 >&2
        status=1
    fi
done
exit $status
