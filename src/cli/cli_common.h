/* cli_common.h: what several subcommands share: loading a model with its optional tokenizer
 * and adapter, and parsing id lists. */
#ifndef PEFT_CLI_COMMON_H
#define PEFT_CLI_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "args.h"
#include "error.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

/* Limits of the numeric options several commands share. With both at their maximum,
 * batch x seq-len (2^29 tokens) still fits the int the model code counts rows in. */
#define CLI_MAX_SEQ 131072 /* tokens per row / window: the longest context of current models */
#define CLI_MAX_BATCH 4096 /* rows per forward */

typedef struct cli_model {
    peft_model *model;
    peft_tokenizer *tok;  /* NULL when the model directory has no tokenizer.json */
    struct peft_adapter_set *adapters; /* NULL without --adapter */
} cli_model;

/* Loads DIR (config, weights, tokenizer if present) for causal-lm and attaches the adapter in
 * adapter_dir (may be NULL). Everything f32 (peft_model_load). */
int cli_model_load(const char *dir, const char *adapter_dir, cli_model *cm, peft_err *err);
/* The same with load options (NULL: causal-lm): the task and its labels (cli_task_args), and
 * keep_blocks (cli_precision_resolve): a GGUF's block-typed linear weights stay in block form as
 * read, except at the sites whose attached adapter reads the base weight (reads_base), which get
 * f32 copies (peft_model_dequantize_sites). */
int cli_model_load_ex(const char *dir, const char *adapter_dir, const peft_model_load_opts *opts, cli_model *cm,
                      peft_err *err);

/* --task causal-lm|seq-cls|image-cls (default causal-lm) and --num-labels N (default 0: the
 * config's id2label / num_labels) into lo->task / lo->n_labels (causal-lm's loaders ignore
 * n_labels). Their help lines: CLI_TASK_HELP. */
#define CLI_MAX_LABELS 65536 /* as the classification heads' loaders accept */
void cli_task_args(cli_args *a, peft_model_load_opts *lo);
struct peft_cls_dataset;
/* The classification data at path for cm's task: seq-cls a TSV / JSONL file tokenized with cm's
 * tokenizer (at most max_len tokens an example), image-cls an ImageFolder directory
 * preprocessed as DIR/preprocessor_config.json says (ViTImageProcessor's defaults without it);
 * labels checked against the model's n_labels (train/cls_data.h). */
int cli_cls_load(const cli_model *cm, const char *path, int max_len, struct peft_cls_dataset **out, peft_err *err);
/* `peft eval` and `peft predict` of a classification model: loads path (cli_cls_load) and runs
 * cm's model with its adapters over it in batches of B (peft_cls_predict): *probs [n, n_labels]
 * and *pred [n] (malloc'ed), with the dataset in *out. */
int cli_cls_run(const cli_model *cm, const char *path, int max_len, int B, struct peft_cls_dataset **out, double **probs,
                int32_t **pred, peft_err *err);
#define CLI_TASK_HELP                                                                                        \
    "  --task T             causal-lm (default), seq-cls (TSV/JSONL sentences and labels) or image-cls\n"   \
    "                       (an ImageFolder directory): docs/classification.md\n"                         \
    "  --num-labels N       classification: labels of the head (default: config.json's id2label)\n"
/* The hint a failure gets when the model keeps block-form weights (a method that needs the f32
 * base at creation: PiSSA, CorDA, SVFT, SaRA): prefixes err and returns rc. */
int cli_blocks_hint(const peft_model *m, int rc, peft_err *err);
void cli_model_free(cli_model *cm);

/* What the frozen matmuls compute in (--precision, --quantize), decided before the model loads. */
typedef enum cli_prec { CLI_PREC_AUTO, CLI_PREC_F32, CLI_PREC_BF16, CLI_PREC_F16 } cli_prec;
typedef struct cli_precision {
    cli_prec asked;        /* --precision (default auto), or the old --bf16 / --f16 */
    const char *flag;      /* how it was asked ("--bf16", "--precision f16"), for messages */
    int allow_emulated;    /* --allow-emulated: run an explicit bf16/f16 without its instructions */
    const char *quantize;  /* --quantize FMT as given, or NULL; the caller sets it */
    /* set by cli_precision_resolve (auto's choice: by cli_precision_apply, which sees the model): */
    const struct peft_half_matmul *half; /* the 16-bit format the frozen matmuls use; NULL: f32 */
    int keep_blocks;       /* load a GGUF's block-typed linear weights as read (peft_model_load_opts.keep_blocks) */
    int needs_f32;         /* the method trains the base weights */
    char why[160];         /* the reason for the choice, for the "precision: ..." line */
} cli_precision;

/* Reads --precision, --bf16 (= --precision bf16), --f16 (= --precision f16) and --allow-emulated;
 * two that disagree are refused (args_complain: args_finish returns 2). */
void cli_precision_args(cli_args *a, cli_precision *p);
/* auto's rule, from bench/README.md's measurements: f16 where its kernels are native (Intel
 * Sapphire/Emerald Rapids: f16 1.4x f32, bf16 0.6x), else bf16 where native (AMD Zen 4/5: 2.2x
 * f32), else NULL = f32 (an emulated 16-bit path is slower than f32: 0.74x on Zen 3). */
const struct peft_half_matmul *cli_precision_auto(int bf16_native, int f16_native);
/* Before loading the model at dir: decides p->keep_blocks and checks the combination. needs_f32:
 * the method trains the base weights (LISA). --quantize q8_0/q4_0/nf4, a GGUF whose blocks are
 * kept (keep, or the default for a .gguf) and needs_f32 multiply in f32: auto picks f32 for them,
 * an explicit bf16/f16 with --quantize is an error (with needs_f32: the caller's to refuse). An
 * explicit bf16/f16 whose kernels are not native is refused, saying what the CPU lacks, unless
 * allow_emulated. */
int cli_precision_resolve(cli_precision *p, const char *dir, int needs_f32, peft_err *err);
/* After loading: auto's choice (f32 when the model kept GGUF blocks), then quantizes to --quantize
 * (peft_model_quantize) or packs the frozen matmuls in p->half (peft_model_use_half), and says on stderr
 * which kernels run ("precision: f32 (auto: ...)"). training: pack the backward layouts too. */
int cli_precision_apply(peft_model *m, cli_precision *p, int training, peft_err *err);
/* Their help lines: precision (train, eval, generate, serve) and --quantize (train, eval, generate). */
#define CLI_PRECISION_HELP                                                                                  \
    "  --precision P        auto (default), f32, bf16 or f16: the frozen matmuls' arithmetic. auto: f16\n"   \
    "                       where AVX512-FP16 runs natively (Intel Sapphire/Emerald Rapids), else bf16\n"    \
    "                       where AVX512-BF16 does (AMD Zen 4/5), else f32 (bench/README.md); f32 with\n"    \
    "                       --quantize or a GGUF's kept blocks. f16 ~1e-3, bf16 ~2e-3 relative rounding;\n"  \
    "                       the environment's PEFT_PRECISION, when set, replaces the default auto\n"          \
    "  --f16, --bf16        the same as --precision f16 / bf16\n"                                           \
    "  --allow-emulated     run --precision bf16/f16 on a CPU without its instructions (slower than f32)\n"
#define CLI_QUANTIZE_HELP                                                                                   \
    "  --quantize FMT       keep the frozen linear weights in q8_0, q4_0 or nf4 (bitsandbytes' NF4 with\n"   \
    "                       double quantisation) and dequantize tile by tile: QLoRA (docs/quantization.md);\n" \
    "                       keep (default for a .gguf without --precision bf16/f16): its Q8_0/Q4_0/Q4_1/\n"   \
    "                       Q4_K/Q5_K/Q6_K linear weights stay in block form as read; none: all f32\n"
#define CLI_HALF_HELP CLI_PRECISION_HELP CLI_QUANTIZE_HELP

/* Parses "1,2,3" or "1 2 3" (any mix of commas and whitespace) into a malloc'ed array. */
int cli_parse_ids(const char *s, const char *what, int32_t **ids, size_t *n, peft_err *err);

#endif
