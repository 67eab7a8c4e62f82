/* generate.c: one sequence being generated (see generate.h). */
#include "models/generate.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

int peft_gen_init(peft_gen *g, peft_model *m, const int32_t *ids, size_t n, size_t max_new, float temperature,
                  float top_p, uint64_t seed, peft_err *err) {
    memset(g, 0, sizeof *g);
    if (n == 0) return peft_fail(err, PEFT_EINVAL, "the prompt is empty");
    size_t total;
    if (!peft_add_ok(n, max_new, &total) || total > INT32_MAX)
        return peft_fail(err, PEFT_EINVAL, "prompt (%zu tokens) + new tokens (%zu) is too long", n, max_new);
    int V = m->info.vocab_size;
    g->chunk = n > PEFT_GEN_CHUNK ? PEFT_GEN_CHUNK : (int)n;
    g->model = m;
    int rc = peft_model_kv_alloc(m, (int)total, g->chunk, &g->kv, err);
    if (rc) return rc;
    g->logits = malloc((size_t)V * sizeof *g->logits);
    g->scratch = malloc((size_t)V * sizeof *g->scratch);
    g->seq = malloc((total + 1) * sizeof *g->seq);
    if (!g->logits || !g->scratch || !g->seq) {
        peft_gen_free(g);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    memcpy(g->seq, ids, n * sizeof *ids);
    g->n_prompt = n;
    g->max_new = max_new;
    g->temperature = temperature;
    g->top_p = top_p;
    peft_rng_seed(&g->rng, seed, 0x67656e);
    return PEFT_OK;
}

void peft_gen_free(peft_gen *g) {
    if (g->model) peft_model_kv_free(g->model, g->kv);
    free(g->logits);
    free(g->scratch);
    free(g->seq);
    memset(g, 0, sizeof *g);
}

int peft_gen_prefill(peft_gen *g, peft_model *m, peft_err *err) {
    int rc = PEFT_OK;
    for (size_t i = 0; rc == PEFT_OK && i < g->n_prompt; i += (size_t)g->chunk) {
        size_t left = g->n_prompt - i;
        int len = left < (size_t)g->chunk ? (int)left : g->chunk;
        rc = peft_model_decode(m, g->kv, g->seq + i, len, g->logits, err);
    }
    return rc;
}

static int is_eos(const peft_model *m, const peft_tokenizer *tok, int id) {
    for (int i = 0; i < m->info.n_eos; i++)
        if (m->info.eos_token_ids[i] == id) return 1;
    return tok && peft_tokenizer_eos_id(tok) == id;
}

int peft_gen_sample(peft_gen *g, const peft_model *m, const peft_tokenizer *tok, int ignore_eos, int32_t *id, int *done,
                    peft_err *err) {
    if (g->n_out >= g->max_new) return peft_fail(err, PEFT_EINVAL, "generation already ended (%zu tokens)", g->n_out);
    int next = sample_next(g->logits, m->info.vocab_size, g->temperature, g->top_p, &g->rng, g->scratch);
    if (next < 0)
        return peft_fail(err, PEFT_ENUMERIC, "the model's logits at new token %zu are not finite: nothing to sample",
                         g->n_out + 1);
    g->seq[g->n_prompt + g->n_out++] = next;
    *id = next;
    *done = (!ignore_eos && is_eos(m, tok, next)) || g->n_out == g->max_new;
    return PEFT_OK;
}

int peft_gen_decode(peft_gen *g, peft_model *m, peft_err *err) {
    return peft_model_decode(m, g->kv, &g->seq[g->n_prompt + g->n_out - 1], 1, g->logits, err);
}

int peft_gen_new_text(const peft_gen *g, const peft_tokenizer *tok, int last, size_t *shown, char **text, peft_err *err) {
    char *all;
    int rc;
    *text = NULL;
    if (*shown == 0) { /* the new text starts where the decoded prompt ends */
        if ((rc = peft_tokenizer_decode(tok, g->seq, g->n_prompt, 1, &all, err))) return rc;
        *shown = strlen(all);
        free(all);
    }
    if ((rc = peft_tokenizer_decode(tok, g->seq, g->n_prompt + g->n_out, 1, &all, err))) return rc;
    size_t len = strlen(all);
    int partial = !last && len >= 3 && !memcmp(all + len - 3, "\xEF\xBF\xBD", 3);
    size_t from = *shown;
    if (len > from && !partial) *shown = len;
    else from = len = 0;
    memmove(all, all + from, len - from);
    all[len - from] = '\0';
    *text = all;
    return PEFT_OK;
}
