/* driver_gpt2.c: the C side of tests/models/test_gpt2_parity.py.
 *
 *   driver_gpt2 MODE MODEL_DIR BATCH OUT [ADAPTER]
 * MODEL_DIR is loaded by peft_model_load (the registry picks gpt2) for the task of
 * $PEFT_DRIVER_TASK ("causal-lm" default, or "seq-cls"). BATCH is a safetensors file of I32
 * tensors: "ids" [B, T], optional "lengths" [B], "targets" ([B, T] causal-lm, [B] seq-cls),
 * "n_new" [1] (generate). ADAPTER, when given, is a PEFT LoRA adapter_model.safetensors whose
 * lora_A / lora_B tensors are attached at their sites (peft_method_lora with $PEFT_DRIVER_ALPHA,
 * rank from the tensors), "base_model.model.score.weight" replaces the head, and PEFT prompt
 * or prefix tuning's "prompt_embeddings" become the model's virtual tokens (m->virt; a batch's first
 * n_virtual ids of each row are then placeholders). An ADAPTER that is a directory is loaded by
 * peft_adapter_set_load instead (as `peft eval --adapter` does).
 * Modes (OUT is a safetensors file of F32 tensors unless said otherwise):
 *   logits    "logits" [B, T, V] or [B, n_labels], target-less forward
 *   grad      "loss" [1]; "logits"; every attached site's "<PEFT key>" gradient of lora_A/lora_B
 *             and "score.weight" (seq-cls), "prompt_embeddings" (prompt tuning); forward with targets, backward (save_all from
 *             $PEFT_DRIVER_SAVE_ALL, default 1; 0 = gradient checkpointing)
 *   generate  "ids" I32 [B, n_new]: greedy continuation of each row through the KV cache
 *             (decode of the prompt in chunks of 3, then one token a time); "batch_ids" the same
 *             through decode_batch over all rows at once (rows of equal length)
 *   sites     OUT is a text file: one line "name out in fan_in_fan_out" per site, from
 *             MODEL_DIR/config.json alone (shapes_only)
 *   save      OUT is a directory: save_hf of the loaded model (merged with ADAPTER when given)
 * Exit status 0, or 1 with the message on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/safetensors.h"
#include "methods/adapter.h"
#include "methods/adapter_set.h"
#include "methods/lora.h"
#include "models/model.h"

#define MAX_SITES 512
#define MAX_ROWS 4096 /* B x T of the largest batch a test sends */

static int die(const peft_err *e) {
    fprintf(stderr, "driver_gpt2: %s\n", e->msg);
    return 1;
}

static const int32_t *batch_i32(const peft_st_file *f, const char *name, int64_t *n) {
    const peft_st_tensor *t = peft_st_find(f, name);
    if (!t || t->dtype != PEFT_I32) return NULL;
    *n = (int64_t)t->numel;
    return (const int32_t *)t->data;
}

/* Attaches LoRA at every site the adapter file names; copies its A and B. */
static int attach(peft_model *m, const char *path, peft_adapter **ad, float **work, peft_err *err) {
    peft_st_file *f;
    int rc = peft_st_open(path, &f, err);
    if (rc) return rc;
    const char *alpha = getenv("PEFT_DRIVER_ALPHA");
    size_t wmax = 0;
    for (int i = 0; i < m->n_sites && rc == PEFT_OK; i++) {
        peft_site *s = m->sites[i];
        char key[512];
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", s->name);
        const peft_st_tensor *tA = peft_st_find(f, key);
        if (!tA) continue;
        peft_method_opts o = {.rank = (int)tA->shape[0], .alpha = alpha ? atof(alpha) : 8.0, .seed = 1};
        if ((rc = peft_method_lora.create(&o, s, MAX_ROWS, &ad[i], err))) break;
        s->adapter = ad[i];
        ad[i]->training = 1;
        peft_param p[2];
        peft_method_lora.params(ad[i], p, 2);
        for (int k = 0; k < 2 && rc == PEFT_OK; k++) {
            snprintf(key, sizeof key, "base_model.model.%s.%s", s->name, p[k].name);
            const peft_st_tensor *t = peft_st_find(f, key);
            if (!t || t->dtype != PEFT_F32 || t->numel != p[k].numel)
                rc = peft_fail(err, PEFT_ESHAPE, "%s: %s missing or not F32 of %zu values", path, key, p[k].numel);
            else memcpy(p[k].data, t->data, p[k].numel * sizeof(float));
        }
        size_t wf = peft_method_lora.work_floats(ad[i], s, MAX_ROWS);
        if (wf > wmax) wmax = wf;
    }
    /* PEFT's "prompt_embeddings": [n_virtual, C] prompt tuning, [n_virtual, L * 2 * C] prefix
     * tuning; hooked as the methods would */
    const peft_st_tensor *tp = peft_st_find(f, "prompt_embeddings");
    if (rc == PEFT_OK && tp) {
        const int64_t C = m->info.hidden_size, prefix = tp->ndim == 2 && tp->shape[1] == 2 * C * m->info.n_layers;
        float *emb = tp->dtype == PEFT_F32 && tp->ndim == 2 && (tp->shape[1] == C || prefix)
                         ? malloc(2 * tp->numel * sizeof(float)) : NULL;
        if (!emb) rc = peft_fail(err, PEFT_ESHAPE, "%s: prompt_embeddings must be F32 [n, C] or [n, 2 L C]", path);
        else {
            memcpy(emb, tp->data, tp->numel * sizeof(float));
            memset(emb + tp->numel, 0, tp->numel * sizeof(float));
            m->virt = prefix ? (peft_virtual){.n_virtual = (int)tp->shape[0], .prefix_kv = emb, .prefix_grad = emb + tp->numel}
                             : (peft_virtual){.n_virtual = (int)tp->shape[0], .emb = emb, .emb_grad = emb + tp->numel};
        }
    }
    const peft_st_tensor *ts = peft_st_find(f, "base_model.model.score.weight");
    if (rc == PEFT_OK && ts && m->n_head) {
        if (ts->dtype != PEFT_F32 || ts->numel != m->head[0].numel) rc = peft_fail(err, PEFT_ESHAPE, "%s: score.weight shape", path);
        else memcpy(m->head[0].data, ts->data, ts->numel * sizeof(float));
    }
    peft_st_close(f);
    if (rc == PEFT_OK && !(*work = calloc(wmax ? wmax : 1, sizeof(float)))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; rc == PEFT_OK && i < m->n_sites; i++)
        if (ad[i]) ad[i]->work = *work;
    return rc;
}

static int write_sites(peft_model *m, const char *out, peft_err *err) {
    FILE *fp = fopen(out, "w");
    if (!fp) return peft_fail(err, PEFT_EIO, "%s: cannot write", out);
    for (int i = 0; i < m->n_sites; i++)
        fprintf(fp, "%s %d %d %d\n", m->sites[i]->name, m->sites[i]->out_features, m->sites[i]->in_features,
                m->sites[i]->fan_in_fan_out);
    for (int i = 0; i < m->n_norms; i++) fprintf(fp, "norm %s %d %d\n", m->norms[i]->name, m->norms[i]->dim, m->norms[i]->layer);
    return fclose(fp) ? peft_fail(err, PEFT_EIO, "%s: write failed", out) : PEFT_OK;
}

/* Greedy continuation of each row: through decode (prompt in chunks of 3), and through decode_batch. */
static int generate(peft_model *m, const int32_t *ids, int B, int T, int n_new, int32_t *out, int32_t *out_b, peft_err *err) {
    const int V = m->info.vocab_size;
    float *logits = malloc((size_t)B * V * sizeof(float));
    peft_kv **kv = calloc((size_t)B, sizeof *kv);
    int rc = logits && kv ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int pass = 0; pass < 2 && rc == PEFT_OK; pass++) {
        for (int b = 0; b < B && rc == PEFT_OK; b++) {
            rc = peft_model_kv_alloc(m, T + n_new, 3, &kv[b], err);
            for (int t = 0; t < T && rc == PEFT_OK; t += 3)
                rc = peft_model_decode(m, kv[b], ids + (size_t)b * T + t, T - t < 3 ? T - t : 3, logits + (size_t)b * V, err);
        }
        int32_t *dst = pass ? out_b : out, cur[256];
        for (int i = 0; i < n_new && rc == PEFT_OK; i++) {
            for (int b = 0; b < B; b++) {
                const float *l = logits + (size_t)b * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (l[v] > l[best]) best = v;
                cur[b] = dst[(size_t)b * n_new + i] = best;
            }
            if (i + 1 == n_new) break;
            if (pass) rc = peft_model_decode_batch(m, kv, cur, B, logits, err);
            else
                for (int b = 0; b < B && rc == PEFT_OK; b++) rc = peft_model_decode(m, kv[b], &cur[b], 1, logits + (size_t)b * V, err);
        }
        for (int b = 0; b < B; b++) peft_model_kv_free(m, kv[b]), kv[b] = NULL;
    }
    free(logits);
    free(kv);
    return rc;
}

/* The batch modes: logits, grad, generate (ad[]: the attached LoRA adapters, if any). */
static int run_batch(const char *mode, peft_model *m, peft_adapter **ad, const char *batch, const char *out, peft_err *err) {
    peft_st_file *bf;
    int rc = peft_st_open(batch, &bf, err);
    if (rc) return rc;
    const peft_st_tensor *tid = peft_st_find(bf, "ids");
    if (!tid || tid->dtype != PEFT_I32 || tid->ndim != 2 || tid->shape[0] > 256) {
        peft_st_close(bf);
        return peft_fail(err, PEFT_EFORMAT, "%s: needs I32 ids [B <= 256, T]", batch);
    }
    const int B = (int)tid->shape[0], T = (int)tid->shape[1], NL = m->info.n_labels, training = !strcmp(mode, "grad");
    int64_t n;
    peft_batch b = {.B = B, .T = T, .ids = (const int32_t *)tid->data};
    b.lengths = batch_i32(bf, "lengths", &n);
    b.targets = training ? batch_i32(bf, "targets", &n) : NULL;
    static peft_st_entry e[2 * MAX_SITES + 4];
    static char keys[2 * MAX_SITES + 4][512];
    int ne = 0;
    int32_t *gen = NULL;
    peft_acts *a = NULL;
    if (!strcmp(mode, "generate")) {
        const int32_t *nn = batch_i32(bf, "n_new", &n);
        const int n_new = nn ? nn[0] : 8;
        gen = malloc(2 * (size_t)B * n_new * sizeof(int32_t));
        rc = gen ? generate(m, b.ids, B, T, n_new, gen, gen + (size_t)B * n_new, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
        e[ne++] = (peft_st_entry){.name = "ids", .dtype = PEFT_I32, .ndim = 2, .shape = {B, n_new}, .data = gen};
        e[ne++] = (peft_st_entry){.name = "batch_ids", .dtype = PEFT_I32, .ndim = 2, .shape = {B, n_new}, .data = gen ? gen + (size_t)B * n_new : NULL};
    } else {
        const char *sa = getenv("PEFT_DRIVER_SAVE_ALL");
        double loss = 0;
        int counted = 0;
        rc = peft_model_acts_alloc(m, B, T, sa ? atoi(sa) : 1, training, &a, err);
        if (rc == PEFT_OK) rc = peft_model_forward(m, a, &b, &loss, &counted, err);
        if (rc == PEFT_OK && training && (rc = peft_model_backward(m, a, &b, counted))) peft_fail(err, rc, "backward failed");
        static float lossf;
        lossf = (float)loss;
        if (rc == PEFT_OK)
            e[ne++] = NL ? (peft_st_entry){.name = "logits", .dtype = PEFT_F32, .ndim = 2, .shape = {B, NL}, .data = peft_model_outputs(m, a)}
                         : (peft_st_entry){.name = "logits", .dtype = PEFT_F32, .ndim = 3, .shape = {B, T, m->info.vocab_size},
                                           .data = peft_model_outputs(m, a)};
        if (rc == PEFT_OK && training) {
            e[ne++] = (peft_st_entry){.name = "loss", .dtype = PEFT_F32, .ndim = 1, .shape = {1}, .data = &lossf};
            for (int i = 0; i < m->n_sites; i++) {
                if (!ad[i]) continue;
                peft_param p[2];
                peft_method_lora.params(ad[i], p, 2);
                for (int k = 0; k < 2; k++) {
                    snprintf(keys[ne], sizeof keys[ne], "base_model.model.%s.%s", m->sites[i]->name, p[k].name);
                    e[ne] = (peft_st_entry){.name = keys[ne], .dtype = PEFT_F32, .ndim = 2,
                                            .shape = {p[k].shape[0], p[k].shape[1]}, .data = p[k].grad};
                    ne++;
                }
            }
            if (m->n_head)
                e[ne++] = (peft_st_entry){.name = "score.weight", .dtype = PEFT_F32, .ndim = 2,
                                          .shape = {m->head[0].shape[0], m->head[0].shape[1]}, .data = m->head[0].grad};
            if (m->virt.emb_grad || m->virt.prefix_grad)
                e[ne++] = (peft_st_entry){.name = "prompt_embeddings", .dtype = PEFT_F32, .ndim = 2,
                                          .shape = {m->virt.n_virtual, (int64_t)m->info.hidden_size * (m->virt.emb ? 1 : 2 * m->info.n_layers)},
                                          .data = m->virt.emb ? m->virt.emb_grad : m->virt.prefix_grad};
        }
    }
    if (rc == PEFT_OK) rc = peft_st_write(out, e, ne, NULL, 0, err);
    peft_model_acts_free(m, a);
    free(gen);
    peft_st_close(bf);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: driver_gpt2 MODE MODEL_DIR BATCH OUT [ADAPTER]\n");
        return 2;
    }
    const char *mode = argv[1], *dir = argv[2], *out = argv[4], *task = getenv("PEFT_DRIVER_TASK");
    peft_err err = {0};
    peft_model_load_opts lo = {.task = task && !strcmp(task, "seq-cls") ? PEFT_TASK_SEQ_CLS : PEFT_TASK_CAUSAL_LM,
                               .shapes_only = !strcmp(mode, "sites")};
    peft_model *m;
    if (peft_model_load(dir, &lo, &m, &err)) return die(&err);
    static peft_adapter *ad[MAX_SITES];
    float *work = NULL;
    peft_adapter_set *set = NULL;
    char acfg[4200];
    snprintf(acfg, sizeof acfg, "%s/adapter_config.json", argc > 5 ? argv[5] : "");
    int rc = PEFT_OK;
    if (strcmp(m->info.arch, "gpt2") || m->n_sites > MAX_SITES) rc = peft_fail(&err, PEFT_EINVAL, "%s: not a gpt2 model of at most %d sites", dir, MAX_SITES);
    else if (!strcmp(mode, "sites")) rc = write_sites(m, out, &err);
    else if (argc > 5 && peft_file_exists(acfg)) {
        rc = peft_adapter_set_load(argv[5], m, 0, &set, &err);
        if (rc == PEFT_OK) rc = peft_adapter_set_reserve(set, MAX_ROWS, &err);
    } else if (argc > 5) {
        rc = attach(m, argv[5], ad, &work, &err);
    }
    if (rc == PEFT_OK && !strcmp(mode, "save")) {
        for (int i = 0; i < m->n_sites && rc == PEFT_OK; i++)
            if (ad[i]) rc = peft_method_lora.merge(ad[i], m->sites[i], +1, &err);
        if (rc == PEFT_OK) rc = peft_model_save_hf(m, out, &err);
    } else if (rc == PEFT_OK && strcmp(mode, "sites")) {
        rc = run_batch(mode, m, ad, argv[3], out, &err);
    }
    for (int i = 0; i < m->n_sites && i < MAX_SITES; i++)
        if (ad[i]) m->sites[i]->adapter = NULL, peft_method_lora.destroy(ad[i]);
    free(work);
    free((float *)(m->virt.emb ? m->virt.emb : m->virt.prefix_kv));
    peft_adapter_set_free(set);
    peft_model_free(m);
    return rc ? die(&err) : 0;
}
