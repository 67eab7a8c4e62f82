/* bench_mixed.c: tokens/s of a mixed-adapter batch (methods/adapter_pool.h) against one adapter
 * at a time.
 *
 *   build/bench_mixed --model DIR [--prompt 32] [--steps 32] [--reps 3] [--work /tmp/bench_mixed]
 *
 * Writes 4 LoRA adapters with random weights into --work (r 8 q,v; r 16 all-linear; r 4
 * gate,up,down; r 8 rsLoRA q,k,v,o), then runs 8 sequences (2 per adapter), each a --prompt-token
 * prompt (random ids, seeded) followed by --steps decoded tokens (fed, not sampled), three ways:
 *   alone:  each adapter loaded on its own (peft_adapter_set_load); each of its sequences
 *           prefilled and decoded by itself with llama_decode (a server without batching)
 *   grouped: the pool; one adapter's 2 sequences at a time through llama_decode_batch
 *   mixed:  the pool; all 8 sequences through llama_decode_batch, rows over 4 adapters
 * Prefill is one prompt at a time in every mode (as peft serve does). Prints one JSON line per
 * mode: prefill_tok_s (prompt tokens / prefill time), decode_tok_s (decoded tokens / decode
 * time), best of --reps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "methods/adapter_pool.h"
#include "methods/adapter_set.h"
#include "models/llama.h"
#include "rng.h"

#define N_AD 4
#define N_SEQ 8

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int die(const peft_err *err) {
    fprintf(stderr, "bench_mixed: %s\n", err->msg);
    return 1;
}

/* Creates adapter i with random A and B (B is zero at init: the term would vanish) and saves it. */
static int write_adapter(peft_llama *m, int i, const char *dir, peft_err *err) {
    static const char *const targets[N_AD] = {"q_proj,v_proj", "all-linear", "gate_proj,up_proj,down_proj",
                                              "q_proj,k_proj,v_proj,o_proj"};
    static const int ranks[N_AD] = {8, 16, 4, 8};
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    snprintf(cfg.target_modules, sizeof cfg.target_modules, "%s", targets[i]);
    cfg.opts.rank = ranks[i];
    cfg.opts.alpha = 2.0 * ranks[i];
    cfg.opts.use_rslora = i == 3;
    cfg.opts.seed = 100 + (uint64_t)i;
    peft_adapter_set *set;
    int rc = peft_adapter_set_create(&m->base, &cfg, 1, &set, err);
    if (rc) return rc;
    peft_rng rng;
    peft_rng_seed(&rng, 7, (uint64_t)i);
    for (int k = 0; k < peft_adapter_set_n_params(set); k++) {
        peft_param *p = &peft_adapter_set_params(set)[k].p;
        for (size_t j = 0; j < p->numel; j++) p->data[j] = 0.02f * peft_rng_normal(&rng);
    }
    rc = peft_adapter_set_save(set, dir, err);
    peft_adapter_set_free(set);
    return rc;
}

typedef struct bench {
    peft_llama *m;
    int P, D;
    int32_t ids[N_SEQ][4096]; /* prompt, then the decoded tokens */
    llama_kv_cache kv[N_SEQ];
    float *logits;            /* [N_SEQ, V] */
} bench;

static int seq_adapter(int s) { return s % N_AD; }

/* Prefills the sequences of list[n] one by one (with the pool's rows when p is non-NULL). */
static int prefill(bench *b, peft_adapter_pool *p, const int *slot, const int *list, int n, peft_err *err) {
    int rows[4096], rc = PEFT_OK;
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        int s = list[i];
        b->kv[s].len = 0;
        for (int t = 0; t < b->P; t++) rows[t] = slot[seq_adapter(s)];
        if (p) rc = peft_adapter_pool_set_rows(p, rows, b->P, err);
        if (rc == PEFT_OK) rc = llama_decode(b->m, &b->kv[s], b->ids[s], b->P, b->logits, err);
    }
    return rc;
}

/* D steps of the sequences list[n]: batched through the pool, or each alone (p NULL). */
static int decode(bench *b, peft_adapter_pool *p, const int *slot, const int *list, int n, peft_err *err) {
    llama_kv_cache *kv[N_SEQ];
    int rows[N_SEQ], rc = PEFT_OK;
    for (int i = 0; i < n; i++) kv[i] = &b->kv[list[i]], rows[i] = slot[seq_adapter(list[i])];
    if (p) rc = peft_adapter_pool_set_rows(p, rows, n, err);
    for (int k = 0; k < b->D && rc == PEFT_OK; k++) {
        int32_t step[N_SEQ];
        for (int i = 0; i < n; i++) step[i] = b->ids[list[i]][b->P + k];
        if (p) rc = llama_decode_batch(b->m, kv, step, n, b->logits, err);
        for (int i = 0; i < n && !p && rc == PEFT_OK; i++) rc = llama_decode(b->m, kv[i], &step[i], 1, b->logits, err);
    }
    return rc;
}

int main(int argc, char **argv) {
    const char *model = NULL, *work = "/tmp/bench_mixed";
    int P = 32, D = 32, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--prompt")) P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) D = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--work")) work = argv[i + 1];
    }
    if (!model || P < 1 || D < 1 || P + D > 4096 || reps < 1) {
        fprintf(stderr, "usage: bench_mixed --model DIR [--prompt 32] [--steps 32] [--reps 3] [--work DIR]\n");
        return 2;
    }
    peft_err err = {0};
    static bench b;
    b.P = P, b.D = D;
    if (llama_load(model, &b.m, &err)) return die(&err);
    char dirs[N_AD][4200];
    mkdir(work, 0755);
    for (int i = 0; i < N_AD; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/adapter%d", work, i);
        if (write_adapter(b.m, i, dirs[i], &err)) return die(&err);
    }
    peft_rng rng;
    peft_rng_seed(&rng, 1, 0);
    for (int s = 0; s < N_SEQ; s++)
        for (int t = 0; t < P + D; t++) b.ids[s][t] = (int32_t)(peft_rng_uniform(&rng) * (b.m->cfg.vocab_size - 1));
    b.logits = malloc((size_t)N_SEQ * b.m->cfg.vocab_size * sizeof(float));
    for (int s = 0; s < N_SEQ; s++)
        if (llama_kv_alloc(b.m, P + D, P, &b.kv[s], &err)) return die(&err);
    static const char *const modes[3] = {"alone", "grouped", "mixed"};
    int all[N_SEQ], slot[N_AD];
    for (int s = 0; s < N_SEQ; s++) all[s] = s;
    for (int mode = 0; mode < 3; mode++) {
        double best_pre = 1e30, best_dec = 1e30;
        for (int r = 0; r < reps; r++) {
            double pre = 0, dec = 0, t0;
            int rc = PEFT_OK;
            if (mode == 0) {
                for (int a = 0; a < N_AD && rc == PEFT_OK; a++) {
                    peft_adapter_set *set;
                    int list[N_SEQ / N_AD], none[N_AD] = {0};
                    for (int i = 0; i < N_SEQ / N_AD; i++) list[i] = a + i * N_AD;
                    if ((rc = peft_adapter_set_load(dirs[a], &b.m->base, P, &set, &err))) break;
                    t0 = now_s();
                    rc = prefill(&b, NULL, none, list, N_SEQ / N_AD, &err);
                    pre += now_s() - t0, t0 = now_s();
                    if (rc == PEFT_OK) rc = decode(&b, NULL, none, list, N_SEQ / N_AD, &err);
                    dec += now_s() - t0;
                    peft_adapter_set_free(set);
                }
            } else {
                peft_adapter_pool *p;
                rc = peft_adapter_pool_create(&b.m->base, P > N_SEQ ? P : N_SEQ, &p, &err);
                for (int a = 0; a < N_AD && rc == PEFT_OK; a++) {
                    char name[16];
                    snprintf(name, sizeof name, "a%d", a);
                    rc = peft_adapter_pool_load(p, name, dirs[a], &err);
                    slot[a] = peft_adapter_pool_find(p, name);
                }
                t0 = now_s();
                if (rc == PEFT_OK) rc = prefill(&b, p, slot, all, N_SEQ, &err);
                pre = now_s() - t0, t0 = now_s();
                for (int a = 0; a < N_AD && rc == PEFT_OK && mode == 1; a++) {
                    int list[N_SEQ / N_AD];
                    for (int i = 0; i < N_SEQ / N_AD; i++) list[i] = a + i * N_AD;
                    rc = decode(&b, p, slot, list, N_SEQ / N_AD, &err);
                }
                if (rc == PEFT_OK && mode == 2) rc = decode(&b, p, slot, all, N_SEQ, &err);
                dec = now_s() - t0;
                peft_adapter_pool_free(p);
            }
            if (rc) return die(&err);
            if (pre < best_pre) best_pre = pre;
            if (dec < best_dec) best_dec = dec;
        }
        printf("{\"mode\": \"%s\", \"sequences\": %d, \"adapters\": %d, \"prompt\": %d, \"steps\": %d, \"prefill_tok_s\": %.1f, "
               "\"decode_tok_s\": %.1f}\n",
               modes[mode], N_SEQ, N_AD, P, D, N_SEQ * P / best_pre, N_SEQ * D / best_dec);
    }
    for (int s = 0; s < N_SEQ; s++) llama_kv_free(&b.kv[s]);
    free(b.logits);
    llama_free(b.m);
    return 0;
}
