/* driver_pool.c: the C side of tests/hf/test_mixed_batch.py (mixed-adapter batches,
 * methods/adapter_pool.h).
 *
 * Takes:
 *   PEFT_DRIVER_MODEL  model directory
 *   PEFT_DRIVER_SPEC   a text file of lines
 *                        adapter NAME DIR      loaded into the pool before anything runs
 *                        hot NAME DIR          loaded after decode step 1, unloaded after step 2
 *                        seq NAME p1 p2 ... / c1 c2 ...   a sequence: its adapter (__base__: none),
 *                                              prompt ids, then the K continuation ids (same K for all)
 *   PEFT_DRIVER_OUT    output safetensors, F32:
 *     pool_fwd    [S, T, V]    one llama_forward over the S prompts right-padded to T (the longest;
 *                              rows past a prompt are padding), every row with its adapter
 *     pool_steps  [S, K+1, V]  each prompt prefilled alone with llama_decode (set_rows of its
 *                              rows), then K llama_decode_batch steps over all S sequences feeding
 *                              the continuation ids: the logits after the prompt and after each one
 *     alone_fwd   [S, T, V]    llama_forward of each prompt alone, its adapter loaded the normal way
 *                              (peft_adapter_set_load), padded rows zero
 *     alone_steps [S, K+1, V]  llama_decode of each sequence alone with its adapter set, one token at a time
 * Exit status 0, or 1 with a message on stderr (also when pool indices moved under hot load/unload). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/safetensors.h"
#include "methods/adapter_pool.h"
#include "methods/adapter_set.h"
#include "models/llama.h"

#define MAX_SEQ 16
#define MAX_ADAPTERS 8
#define MAX_IDS 256

typedef struct spec {
    int n_ad;
    char ad_name[MAX_ADAPTERS][64], ad_dir[MAX_ADAPTERS][1024];
    char hot_name[64], hot_dir[1024];
    int n_seq, K, T;
    char seq_ad[MAX_SEQ][64];
    int n_prompt[MAX_SEQ];
    int32_t prompt[MAX_SEQ][MAX_IDS], cont[MAX_SEQ][MAX_IDS];
} spec;

static int parse_spec(char *text, spec *sp, peft_err *err) {
    memset(sp, 0, sizeof *sp);
    sp->K = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char kind[16], name[64], dir[1024];
        int used = 0;
        if (sscanf(line, "%15s %63s %n", kind, name, &used) < 2) continue;
        if (!strcmp(kind, "adapter") && sp->n_ad < MAX_ADAPTERS && sscanf(line + used, "%1023s", dir) == 1) {
            snprintf(sp->ad_name[sp->n_ad], 64, "%s", name);
            snprintf(sp->ad_dir[sp->n_ad++], 1024, "%s", dir);
        } else if (!strcmp(kind, "hot") && sscanf(line + used, "%1023s", dir) == 1) {
            snprintf(sp->hot_name, 64, "%s", name);
            snprintf(sp->hot_dir, 1024, "%s", dir);
        } else if (!strcmp(kind, "seq") && sp->n_seq < MAX_SEQ) {
            int s = sp->n_seq++, np = 0, nc = 0, after = 0;
            snprintf(sp->seq_ad[s], 64, "%s", name);
            for (char *tok = line + used; *tok;) {
                while (*tok == ' ') tok++;
                if (*tok == '/') after = 1, tok++;
                else if (*tok) {
                    char *end;
                    long v = strtol(tok, &end, 10);
                    if (end == tok || (after ? nc : np) == MAX_IDS) return peft_fail(err, PEFT_EFORMAT, "spec: bad seq line");
                    if (after) sp->cont[s][nc++] = (int32_t)v;
                    else sp->prompt[s][np++] = (int32_t)v;
                    tok = end;
                }
            }
            if (np == 0 || (sp->K >= 0 && nc != sp->K)) return peft_fail(err, PEFT_EFORMAT, "spec: seq %d: empty prompt or K differs", s);
            sp->K = nc;
            sp->n_prompt[s] = np;
            if (np > sp->T) sp->T = np;
        } else {
            return peft_fail(err, PEFT_EFORMAT, "spec: cannot read \"%s\"", line);
        }
    }
    if (sp->n_seq == 0) return peft_fail(err, PEFT_EFORMAT, "spec: no seq line");
    return PEFT_OK;
}

static const char *seq_dir(const spec *sp, int s) {
    for (int a = 0; a < sp->n_ad; a++)
        if (!strcmp(sp->ad_name[a], sp->seq_ad[s])) return sp->ad_dir[a];
    return NULL; /* __base__ */
}

/* Every result of the pool: one mixed forward, then per-sequence prefill and batched steps. */
static int run_pool(peft_llama *m, const spec *sp, float *fwd, float *steps, peft_err *err) {
    int S = sp->n_seq, T = sp->T, K = sp->K, V = m->cfg.vocab_size;
    size_t SV = (size_t)V;
    peft_adapter_pool *p;
    int rc = peft_adapter_pool_create(&m->base, S * T, &p, err);
    for (int a = 0; a < sp->n_ad && rc == PEFT_OK; a++) rc = peft_adapter_pool_load(p, sp->ad_name[a], sp->ad_dir[a], err);
    int rows[MAX_SEQ * MAX_IDS], seq_idx[MAX_SEQ];
    for (int s = 0; s < S && rc == PEFT_OK; s++) seq_idx[s] = strcmp(sp->seq_ad[s], "__base__") ? peft_adapter_pool_find(p, sp->seq_ad[s]) : -1;
    int32_t *ids = calloc((size_t)S * T, sizeof *ids);
    llama_acts acts = {0};
    llama_kv_cache kv[MAX_SEQ] = {{0}};
    llama_kv_cache *kvp[MAX_SEQ];
    if (rc == PEFT_OK && !ids) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) rc = llama_acts_alloc(m, S, T, 0, 0, &acts, err);
    for (int s = 0; s < S && rc == PEFT_OK; s++) {
        memcpy(ids + (size_t)s * T, sp->prompt[s], (size_t)sp->n_prompt[s] * sizeof *ids);
        for (int t = 0; t < T; t++) rows[s * T + t] = seq_idx[s];
    }
    if (rc == PEFT_OK) rc = peft_adapter_pool_set_rows(p, rows, S * T, err);
    if (rc == PEFT_OK) rc = llama_forward(m, &acts, ids, NULL, NULL, NULL, NULL, err);
    if (rc == PEFT_OK) memcpy(fwd, acts.logits, (size_t)S * T * SV * sizeof(float));
    for (int s = 0; s < S && rc == PEFT_OK; s++) { /* serve's prefill: one prompt at a time */
        kvp[s] = &kv[s];
        rc = llama_kv_alloc(m, T + K, T, &kv[s], err);
        for (int t = 0; t < sp->n_prompt[s] && rc == PEFT_OK; t++) rows[t] = seq_idx[s];
        if (rc == PEFT_OK) rc = peft_adapter_pool_set_rows(p, rows, sp->n_prompt[s], err);
        if (rc == PEFT_OK) rc = llama_decode(m, &kv[s], sp->prompt[s], sp->n_prompt[s], steps + (size_t)s * (K + 1) * SV, err);
    }
    float *logits = malloc((size_t)S * SV * sizeof(float));
    if (rc == PEFT_OK && !logits) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) rc = peft_adapter_pool_set_rows(p, seq_idx, S, err);
    for (int k = 0; k < K && rc == PEFT_OK; k++) {
        int32_t step_ids[MAX_SEQ];
        for (int s = 0; s < S; s++) step_ids[s] = sp->cont[s][k];
        rc = llama_decode_batch(m, kvp, step_ids, S, logits, err);
        for (int s = 0; s < S && rc == PEFT_OK; s++)
            memcpy(steps + ((size_t)s * (K + 1) + k + 1) * SV, logits + (size_t)s * SV, SV * sizeof(float));
        if (rc == PEFT_OK && sp->hot_name[0] && k == 0) rc = peft_adapter_pool_load(p, sp->hot_name, sp->hot_dir, err);
        if (rc == PEFT_OK && sp->hot_name[0] && k == 1) rc = peft_adapter_pool_unload(p, sp->hot_name, err);
        for (int s = 0; s < S && rc == PEFT_OK; s++) /* indices stay put while others come and go */
            if (seq_idx[s] >= 0 && peft_adapter_pool_find(p, sp->seq_ad[s]) != seq_idx[s])
                rc = peft_fail(err, PEFT_EINVAL, "pool index of \"%s\" moved from %d", sp->seq_ad[s], seq_idx[s]);
    }
    free(logits);
    for (int s = 0; s < S; s++) llama_kv_free(&kv[s]);
    llama_acts_free(&acts);
    free(ids);
    peft_adapter_pool_free(p);
    return rc;
}

/* The reference: each sequence alone with its adapter set loaded the normal way. */
static int run_alone(peft_llama *m, const spec *sp, float *fwd, float *steps, peft_err *err) {
    int T = sp->T, K = sp->K;
    size_t SV = (size_t)m->cfg.vocab_size;
    int rc = PEFT_OK;
    for (int s = 0; s < sp->n_seq && rc == PEFT_OK; s++) {
        peft_adapter_set *set = NULL;
        llama_acts acts = {0};
        llama_kv_cache kv = {0};
        int n = sp->n_prompt[s];
        if (seq_dir(sp, s)) rc = peft_adapter_set_load(seq_dir(sp, s), &m->base, n, &set, err); /* scratch for n rows */
        if (rc == PEFT_OK) rc = llama_acts_alloc(m, 1, n, 0, 0, &acts, err);
        if (rc == PEFT_OK) rc = llama_forward(m, &acts, sp->prompt[s], NULL, NULL, NULL, NULL, err);
        if (rc == PEFT_OK) memcpy(fwd + (size_t)s * T * SV, acts.logits, (size_t)n * SV * sizeof(float));
        if (rc == PEFT_OK) rc = llama_kv_alloc(m, n + K, 1, &kv, err);
        for (int t = 0; t < n + K && rc == PEFT_OK; t++) {
            const int32_t *id = t < n ? &sp->prompt[s][t] : &sp->cont[s][t - n];
            float *out = steps + ((size_t)s * (K + 1) + (t < n ? 0 : t - n + 1)) * SV;
            rc = llama_decode(m, &kv, id, 1, out, err);
        }
        llama_kv_free(&kv);
        llama_acts_free(&acts);
        peft_adapter_set_free(set);
    }
    return rc;
}

int main(void) {
    const char *model = getenv("PEFT_DRIVER_MODEL"), *spec_path = getenv("PEFT_DRIVER_SPEC"), *out = getenv("PEFT_DRIVER_OUT");
    if (!model || !spec_path || !out) {
        fprintf(stderr, "driver_pool: set PEFT_DRIVER_MODEL, PEFT_DRIVER_SPEC and PEFT_DRIVER_OUT\n");
        return 1;
    }
    peft_err err = {0};
    static spec sp;
    char *text = NULL;
    size_t len;
    peft_llama *m = NULL;
    int rc = peft_read_file(spec_path, &text, &len, &err);
    if (rc == PEFT_OK) rc = parse_spec(text, &sp, &err);
    if (rc == PEFT_OK) rc = llama_load(model, &m, &err);
    int S = sp.n_seq, T = sp.T, K1 = sp.K + 1;
    size_t V = rc == PEFT_OK ? (size_t)m->cfg.vocab_size : 0, nf = (size_t)S * T * V, ns = (size_t)S * K1 * V;
    float *buf = rc == PEFT_OK ? calloc(2 * (nf + ns), sizeof(float)) : NULL;
    if (rc == PEFT_OK && !buf) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) rc = run_pool(m, &sp, buf, buf + nf, &err);
    if (rc == PEFT_OK) rc = run_alone(m, &sp, buf + nf + ns, buf + 2 * nf + ns, &err);
    if (rc == PEFT_OK) {
        peft_st_entry e[4] = {{"pool_fwd", PEFT_F32, 3, {S, T, (int64_t)V}, buf},
                              {"pool_steps", PEFT_F32, 3, {S, K1, (int64_t)V}, buf + nf},
                              {"alone_fwd", PEFT_F32, 3, {S, T, (int64_t)V}, buf + nf + ns},
                              {"alone_steps", PEFT_F32, 3, {S, K1, (int64_t)V}, buf + 2 * nf + ns}};
        rc = peft_st_write(out, e, 4, NULL, 0, &err);
    }
    free(buf);
    free(text);
    llama_free(m);
    if (rc) fprintf(stderr, "driver_pool: %s\n", err.msg);
    return rc ? 1 : 0;
}
