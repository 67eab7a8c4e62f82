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

int cli_use_half(peft_llama *m, int bf16, int f16, const char *quantize, int training, peft_err *err) {
    if (bf16 && f16) return peft_fail(err, PEFT_EINVAL, "--bf16 and --f16 exclude each other: pick one");
    if (quantize && (!strcmp(quantize, "keep") || !strcmp(quantize, "none"))) quantize = NULL; /* decided at load */
    if (quantize) {
        const peft_qformat *q = peft_qformat_find(quantize);
        if (!q || !q->quantize_rows || !strcmp(q->name, "q4_1"))
            return peft_fail(err, PEFT_EINVAL, "--quantize must be keep, none, q8_0, q4_0 or nf4 (got '%s')", quantize);
        if (bf16 || f16)
            return peft_fail(err, PEFT_EINVAL, "--quantize keeps the frozen weights in %s and multiplies in f32: leave out --%s",
                             q->name, bf16 ? "bf16" : "f16");
        int rc = llama_quantize(m, q, err), kept = 0;
        for (int i = 0; rc == PEFT_OK && i < llama_n_sites(m); i++) kept += !llama_site(m, i)->qfmt;
        if (kept)
            fprintf(stderr, "peft: note: %d of %d linear layers stay f32 (in_features not a multiple of %s's %d-value block)\n",
                    kept, llama_n_sites(m), q->name, q->block);
        return rc;
    }
    if (!bf16 && !f16) return PEFT_OK;
    const peft_half_matmul *fmt = f16 ? &peft_half_f16 : &peft_half_bf16;
    if (!fmt->native)
        fprintf(stderr, "peft: warning: this build has no %s instructions (AVX512-%s); --%s runs a fallback slower than f32\n",
                fmt->name, f16 ? "FP16" : "BF16", fmt->name);
    return llama_use_half(m, fmt, training, err);
}

int cli_keep_blocks(const char *dir, const char *quantize, int bf16, int f16, int needs_f32, int *keep, peft_err *err) {
    int asked = quantize && !strcmp(quantize, "keep");
    if (asked && (bf16 || f16))
        return peft_fail(err, PEFT_EINVAL, "--quantize keep multiplies the GGUF's blocks in f32: leave out --%s, or use --quantize none",
                         bf16 ? "bf16" : "f16");
    if (asked && needs_f32)
        return peft_fail(err, PEFT_EINVAL, "--quantize keep: this method trains the base weights, which must be f32 (--quantize none)");
    *keep = peft_gguf_is_file(dir) && (asked || (!quantize && !bf16 && !f16 && !needs_f32));
    return PEFT_OK;
}

int cli_blocks_hint(const peft_llama *m, int rc, peft_err *err) {
    if (rc && m && m->n_kept_blocks)
        peft_err_prefix(err, "%d linear weights are kept in the GGUF's block formats (load them as f32 with --quantize none)",
                        m->n_kept_blocks);
    return rc;
}

/* The sites whose adapter reads the base weight get it in f32 (they stop using the blocks). */
static int dequantize_read_sites(peft_llama *m, peft_err *err) {
    peft_site **sites = malloc((size_t)llama_n_sites(m) * sizeof *sites);
    if (!sites) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < llama_n_sites(m); i++) {
        peft_site *s = llama_site(m, i);
        if (s->adapter && s->adapter->method->reads_base) sites[n++] = s;
    }
    int rc = llama_dequantize_sites(m, sites, n, err);
    free(sites);
    return rc;
}

int cli_model_load_ex(const char *dir, const char *adapter_dir, int keep_blocks, cli_model *cm, peft_err *err) {
    memset(cm, 0, sizeof *cm);
    int rc = llama_load_ex(dir, keep_blocks ? LLAMA_KEEP_BLOCKS : 0, &cm->model, err);
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
    return cli_model_load_ex(dir, adapter_dir, 0, cm, err);
}

void cli_model_free(cli_model *cm) {
    peft_adapter_set_free(cm->adapters);
    peft_tokenizer_free(cm->tok);
    llama_free(cm->model);
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
