#!/usr/bin/env bash
# The runtime settings `peft` gives itself (peft_runtime_reexec, src/kernels/threads.c), read
# back from `peft --version`:
#  1. OMP_WAIT_POLICY unset -> the process runs with PASSIVE;
#  2. a user's OMP_WAIT_POLICY and OPENBLAS_CORETYPE are kept as they are;
#  3. on a CPU with AVX-512 (F, BW, DQ, VL in /proc/cpuinfo) OpenBLAS never runs its pre-AVX2
#     fallback kernels (Debian's 0.3.21 picks Prescott on CPUs newer than its tables);
#  4. the build (-march=native) has the 16-bit matmul kernels the CPU has: --f16 native where
#     /proc/cpuinfo lists avx512_fp16, --bf16 where it lists avx512_bf16.
set -u
BIN=${PEFT_BIN:?PEFT_BIN not set}
pass=0 fail=0
check() { # description, condition result (0 = ok)
  if [ "$2" = 0 ]; then echo "ok: $1"; pass=$((pass + 1)); else echo "FAIL: $1"; fail=$((fail + 1)); fi
}

out=$(env -u OMP_WAIT_POLICY -u OPENBLAS_CORETYPE "$BIN" --version)
echo "$out"
echo "$out" | grep -q "OMP_WAIT_POLICY=PASSIVE$"; check "unset wait policy becomes PASSIVE" $?

out=$(OMP_WAIT_POLICY=ACTIVE OPENBLAS_CORETYPE=Haswell "$BIN" --version)
echo "$out" | grep -q "OMP_WAIT_POLICY=ACTIVE$"; check "user's OMP_WAIT_POLICY kept" $?
echo "$out" | grep -q "OpenBLAS Haswell kernels"; check "user's OPENBLAS_CORETYPE kept" $?

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has() { echo " $flags " | grep -q " $1 "; }
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then
  out=$(env -u OMP_WAIT_POLICY -u OPENBLAS_CORETYPE "$BIN" --version)
  echo "$out" | grep -Eq "OpenBLAS (Prescott|Core2|Penryn|Dunnington|Nehalem|Sandybridge) kernels"
  [ $? != 0 ]; check "AVX-512 CPU: no pre-AVX2 OpenBLAS kernels" $?
else
  echo "skip: no AVX-512 on this CPU (check 3)"
fi

out=$("$BIN" --version)
for f in "f16 avx512_fp16 AVX512-FP16" "bf16 avx512_bf16 AVX512-BF16"; do
  set -- $f
  if has "$2"; then
    echo "$out" | grep -q -- "--$1 $3"; check "CPU has $2: --$1 runs native kernels" $?
  else
    echo "$out" | grep -q -- "--$1 sgemm fallback"; check "CPU lacks $2: --$1 reports the fallback" $?
  fi
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
