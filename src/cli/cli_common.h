/* cli_common.h: what several subcommands share: loading a model with its optional tokenizer
 * and adapter, and parsing id lists. */
#ifndef PEFT_CLI_COMMON_H
#define PEFT_CLI_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/llama.h"
#include "tokenizer/tokenizer.h"

/* Limits of the numeric options several commands share. With both at their maximum,
 * batch x seq-len (2^29 tokens) still fits the int the model code counts rows in. */
#define CLI_MAX_SEQ 131072 /* tokens per row / window: the longest context of current models */
#define CLI_MAX_BATCH 4096 /* rows per forward */

typedef struct cli_model {
    peft_llama *model;
    peft_tokenizer *tok;  /* NULL when the model directory has no tokenizer.json */
    struct peft_adapter_set *adapters; /* NULL without --adapter */
} cli_model;

/* Loads DIR (config, weights, tokenizer if present) and attaches the adapter in adapter_dir
 * (may be NULL). Everything f32 (llama_load). */
int cli_model_load(const char *dir, const char *adapter_dir, cli_model *cm, peft_err *err);
/* The same; keep_blocks (cli_keep_blocks): a GGUF's block-typed linear weights stay in block form
 * as read (LLAMA_KEEP_BLOCKS), except at the sites whose attached adapter reads the base weight
 * (reads_base), which get f32 copies (llama_dequantize_sites). */
int cli_model_load_ex(const char *dir, const char *adapter_dir, int keep_blocks, cli_model *cm, peft_err *err);
/* Whether a model at dir loads with its GGUF blocks kept (*keep 1) or everything f32 (0), from
 * --quantize (NULL when not given), --bf16 / --f16 and needs_f32 (a method that trains the base
 * weights, LISA): "keep", or by default for a .gguf model unless bf16, f16 or needs_f32; "none"
 * and the formats llama_quantize writes load f32. "keep" with bf16, f16 or needs_f32: an error. */
int cli_keep_blocks(const char *dir, const char *quantize, int bf16, int f16, int needs_f32, int *keep, peft_err *err);
/* The hint a failure gets when the model keeps block-form weights (a method that needs the f32
 * base at creation: PiSSA, CorDA, SVFT, SaRA): prefixes err and returns rc. */
int cli_blocks_hint(const peft_llama *m, int rc, peft_err *err);
void cli_model_free(cli_model *cm);

/* --bf16 / --f16 (flags given, 0 or 1 each): switches the model's frozen matmuls to that 16-bit
 * format (llama_use_half); neither: stays f32. Both: an error. --quantize NAME (or NULL):
 * quantizes the sites' weights to q8_0, q4_0 or nf4 instead (llama_quantize); with --bf16 or
 * --f16 an error. "keep" and "none" (chosen at load, cli_keep_blocks) change nothing here. */
int cli_use_half(peft_llama *m, int bf16, int f16, const char *quantize, int training, peft_err *err);
/* Their help lines, shared by train, eval and generate. */
#define CLI_HALF_HELP                                                                                       \
    "  --f16                frozen matmuls in f16 (AVX512-FP16, f32 sums), ~1e-3 relative rounding: twice\n"  \
    "                       the f32 speed on Intel Sapphire/Emerald Rapids (bench/README.md)\n"                \
    "  --bf16               frozen matmuls in bf16 (AVX512-BF16), ~2e-3 relative rounding: faster on AMD\n"    \
    "                       Zen 4/5, slower than f32 on Intel without AMX\n"                              \
    "  --quantize FMT       keep the frozen linear weights in q8_0, q4_0 or nf4 (bitsandbytes' NF4 with\n"   \
    "                       double quantisation) and dequantize tile by tile: QLoRA (docs/quantization.md);\n" \
    "                       keep (default for a .gguf without --bf16/--f16): its Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/\n" \
    "                       Q6_K linear weights stay in block form as read; none: dequantize all to f32\n"

/* Parses "1,2,3" or "1 2 3" (any mix of commas and whitespace) into a malloc'ed array. */
int cli_parse_ids(const char *s, const char *what, int32_t **ids, size_t *n, peft_err *err);

#endif
