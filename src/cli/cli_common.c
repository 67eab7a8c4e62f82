/* cli_common.c: model/tokenizer/adapter loading and id parsing for the CLI. */
#include "cli_common.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/gguf.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "methods/adapter.h"
#include "methods/adapter_set.h"
#include "train/cls_data.h"
#include "train/cls_eval.h"

void cli_precision_args(cli_args *a, cli_precision *p) {
    static const char *const names[] = {"auto", "f32", "bf16", "f16", NULL};
    static char flag[32]; /* one command line per process */
    memset(p, 0, sizeof *p);
    /* PEFT_PRECISION, when set, is the default instead of auto (the test suite pins f32 with it,
     * so that its comparisons with f32 oracles do not depend on the CPU running them) */
    int dflt = CLI_PREC_AUTO;
    const char *env = getenv("PEFT_PRECISION");
    if (env && *env) {
        int k = 0;
        while (names[k] && strcmp(names[k], env)) k++;
        if (names[k]) dflt = k;
        else args_complain(a, "PEFT_PRECISION=\"%.32s\": expected auto, f32, bf16 or f16", env);
    }
    int given = args_str(a, "--precision", NULL) != NULL;
    p->asked = (cli_prec)args_choice(a, "--precision", names, dflt);
    if (given || dflt == CLI_PREC_AUTO) snprintf(flag, sizeof flag, "--precision %s", names[p->asked]);
    else snprintf(flag, sizeof flag, "PEFT_PRECISION=%s", names[p->asked]);
    p->flag = flag;
    int bf16 = args_has(a, "--bf16"), f16 = args_has(a, "--f16");
    if (bf16 && f16) args_complain(a, "--bf16 and --f16 exclude each other: pick one");
    else if (bf16 || f16) {
        cli_prec k = bf16 ? CLI_PREC_BF16 : CLI_PREC_F16;
        const char *old = bf16 ? "--bf16" : "--f16";
        if (given && p->asked != k) args_complain(a, "%s and %s exclude each other: pick one", old, flag);
        p->asked = k;
        p->flag = old;
    }
    p->allow_emulated = args_has(a, "--allow-emulated");
}

const peft_half_matmul *cli_precision_auto(int bf16_native, int f16_native) {
    return f16_native ? &peft_half_f16 : bf16_native ? &peft_half_bf16 : NULL;
}

int cli_precision_resolve(cli_precision *p, const char *dir, int needs_f32, peft_err *err) {
    int half = p->asked == CLI_PREC_BF16 || p->asked == CLI_PREC_F16;
    const char *q = p->quantize;
    int keep_asked = q && !strcmp(q, "keep"), quantized = q && !keep_asked && strcmp(q, "none");
    if (keep_asked && half)
        return peft_fail(err, PEFT_EINVAL, "--quantize keep multiplies the GGUF's blocks in f32: leave out %s, or use --quantize none",
                         p->flag);
    if (keep_asked && needs_f32)
        return peft_fail(err, PEFT_EINVAL, "--quantize keep: this method trains the base weights, which must be f32 (--quantize none)");
    if (quantized && half)
        return peft_fail(err, PEFT_EINVAL, "--quantize %s keeps the frozen weights quantized and multiplies in f32: leave out %s", q,
                         p->flag);
    p->keep_blocks = peft_gguf_is_file(dir) && (keep_asked || (!q && !half && !needs_f32));
    p->needs_f32 = needs_f32;
    p->half = NULL;
    if (!half) return PEFT_OK;
    p->half = p->asked == CLI_PREC_F16 ? &peft_half_f16 : &peft_half_bf16;
    const char *isa = p->half == &peft_half_f16 ? "AVX512-FP16" : "AVX512-BF16";
    if (!p->half->native && !p->allow_emulated)
        return peft_fail(err, PEFT_EINVAL,
                         "%s: this CPU (or this build) has no %s, so %s would run emulated (widened to f32), slower than f32: "
                         "use --precision auto or f32, or add --allow-emulated to run it anyway",
                         p->flag, isa, p->half->name);
    snprintf(p->why, sizeof p->why, "%s: %s%s", p->flag, p->half->native ? "" : "emulated, no ", isa);
    return PEFT_OK;
}

int cli_precision_apply(peft_model *m, cli_precision *p, int training, peft_err *err) {
    const char *q = p->quantize;
    const peft_qformat *qf = NULL;
    if (q && strcmp(q, "keep") && strcmp(q, "none")) {
        qf = peft_qformat_find(q);
        if (!qf || !qf->quantize_rows || !strcmp(qf->name, "q4_1"))
            return peft_fail(err, PEFT_EINVAL, "--quantize must be keep, none, q8_0, q4_0 or nf4 (got '%s')", q);
    }
    if (p->asked == CLI_PREC_F32) snprintf(p->why, sizeof p->why, "%s", p->flag);
    else if (p->asked == CLI_PREC_AUTO && (qf || m->n_kept_blocks || p->needs_f32))
        snprintf(p->why, sizeof p->why, "auto: %s", qf ? "--quantize multiplies in f32"
                                                    : m->n_kept_blocks ? "the GGUF's kept blocks multiply in f32"
                                                                       : "this method trains the base weights in f32");
    else if (p->asked == CLI_PREC_AUTO && !m->ops->use_half)
        snprintf(p->why, sizeof p->why, "auto: the %s architecture multiplies in f32 only", m->info.arch);
    else if (p->asked == CLI_PREC_AUTO) {
        p->half = cli_precision_auto(peft_half_bf16.native, peft_half_f16.native);
        snprintf(p->why, sizeof p->why, "auto: %s",
                 p->half == &peft_half_f16    ? "AVX512-FP16"
                 : p->half == &peft_half_bf16 ? "AVX512-BF16, no AVX512-FP16"
                                              : "no native AVX512-FP16 or AVX512-BF16 kernels");
    }
    int rc = qf ? peft_model_quantize(m, qf, err) : p->half ? peft_model_use_half(m, p->half, training, err) : PEFT_OK;
    if (rc) return rc;
    int kept = 0;
    for (int i = 0; qf && i < m->n_sites; i++) kept += !m->sites[i]->qfmt;
    if (kept)
        fprintf(stderr, "peft: note: %d of %d linear layers stay f32 (in_features not a multiple of %s's %d-value block)\n",
                kept, m->n_sites, qf->name, qf->block);
    char on[64] = "";
    if (qf) snprintf(on, sizeof on, " on %s weights", qf->name);
    else if (m->n_kept_blocks) snprintf(on, sizeof on, " on %d GGUF block-form weights", m->n_kept_blocks);
    fprintf(stderr, "precision: %s%s (%s)\n", p->half ? p->half->name : "f32", on, p->why);
    return PEFT_OK;
}

int cli_blocks_hint(const peft_model *m, int rc, peft_err *err) {
    if (rc && m && m->n_kept_blocks)
        peft_err_prefix(err, "%d linear weights are kept in the GGUF's block formats (load them as f32 with --quantize none)",
                        m->n_kept_blocks);
    return rc;
}

/* The sites whose adapter reads the base weight get it in f32 (they stop using the blocks). */
static int dequantize_read_sites(peft_model *m, peft_err *err) {
    peft_site **sites = malloc((size_t)m->n_sites * sizeof *sites);
    if (!sites) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < m->n_sites; i++) {
        peft_site *s = m->sites[i];
        if (s->adapter && s->adapter->method->reads_base) sites[n++] = s;
    }
    int rc = peft_model_dequantize_sites(m, sites, n, err);
    free(sites);
    return rc;
}

int cli_model_load_ex(const char *dir, const char *adapter_dir, const peft_model_load_opts *opts, cli_model *cm,
                      peft_err *err) {
    memset(cm, 0, sizeof *cm);
    int rc = peft_model_load(dir, opts, &cm->model, err);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (rc == PEFT_OK && (peft_file_exists(path) || peft_gguf_is_file(dir))) rc = peft_tokenizer_load(dir, &cm->tok, err);
    if (rc == PEFT_OK && adapter_dir)
        rc = cli_blocks_hint(cm->model, peft_adapter_set_load(adapter_dir, cm->model, 0, &cm->adapters, err), err);
    if (rc == PEFT_OK && cm->adapters) rc = dequantize_read_sites(cm->model, err);
    if (rc) cli_model_free(cm);
    return rc;
}

int cli_model_load(const char *dir, const char *adapter_dir, cli_model *cm, peft_err *err) {
    return cli_model_load_ex(dir, adapter_dir, NULL, cm, err);
}

void cli_task_args(cli_args *a, peft_model_load_opts *lo) {
    static const char *const tasks[] = {"causal-lm", "seq-cls", "image-cls", NULL}; /* peft_task order */
    lo->task = (peft_task)args_choice(a, "--task", tasks, PEFT_TASK_CAUSAL_LM);
    lo->n_labels = (int)args_int(a, "--num-labels", 0, 2, CLI_MAX_LABELS);
}

void cli_model_free(cli_model *cm) {
    peft_adapter_set_free(cm->adapters);
    peft_tokenizer_free(cm->tok);
    peft_model_free(cm->model);
    memset(cm, 0, sizeof *cm);
}

int cli_parse_ids(const char *s, const char *what, int32_t **ids, size_t *n, peft_err *err) {
    size_t cap = 64, count = 0;
    int32_t *out = malloc(cap * sizeof *out);
    if (!out) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    const char *p = s;
    while (*p) {
        while (*p && (isspace((unsigned char)*p) || *p == ',')) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && !isspace((unsigned char)*end) && *end != ',')) {
            free(out);
            return peft_fail(err, PEFT_EINVAL, "%s: '%.20s' is not a token id (expected non-negative integers)", what, p);
        }
        if (count == cap) {
            int32_t *grown = realloc(out, (cap *= 2) * sizeof *out);
            if (!grown) {
                free(out);
                return peft_fail(err, PEFT_ENOMEM, "out of memory");
            }
            out = grown;
        }
        out[count++] = (int32_t)v;
        p = end;
    }
    *ids = out;
    *n = count;
    return PEFT_OK;
}

int cli_cls_load(const cli_model *cm, const char *path, int max_len, peft_cls_dataset **out, peft_err *err) {
    const peft_model *m = cm->model;
    peft_cls_opts co = {.max_len = max_len, .n_labels = m->info.n_labels};
    if (m->info.task == PEFT_TASK_IMAGE_CLS) {
        char pp[4200];
        snprintf(pp, sizeof pp, "%s/preprocessor_config.json", m->dir);
        return peft_cls_load_images(path, peft_file_exists(pp) ? pp : NULL, &co, out, err);
    }
    if (!cm->tok) return peft_fail(err, PEFT_EINVAL, "%s has no tokenizer.json: seq-cls data must be tokenized", m->dir);
    return peft_cls_load_text(path, cm->tok, &co, out, err);
}

int cli_cls_run(const cli_model *cm, const char *path, int max_len, int B, peft_cls_dataset **out, double **probs,
                int32_t **pred, peft_err *err) {
    *probs = NULL;
    *pred = NULL;
    int rc = cli_cls_load(cm, path, max_len, out, err);
    if (rc) return rc;
    size_t n = (size_t)(*out)->n, NL = (size_t)cm->model->info.n_labels;
    *probs = malloc(n * NL * sizeof **probs);
    *pred = malloc(n * sizeof **pred);
    if (!*probs || !*pred) return peft_fail(err, PEFT_ENOMEM, "out of memory for %zu x %zu probabilities", n, NL);
    return peft_cls_predict(cm->model, cm->adapters, *out, B, *probs, *pred, err);
}
