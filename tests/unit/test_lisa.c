/* test_lisa.c: LISA (methods/lisa.h), against oracles of its own definition:
 *  1. sampling: each period draws gamma distinct layers; over 7000 periods of (L 7, gamma 3)
 *     each of the 35 subsets comes up 200 +- 5 sigma times and each layer 3000 +- 5 sigma; the
 *     draw is a function of (seed, period) only;
 *  2. gradients: central differences of the whole model's loss for every tensor of the active
 *     layer (its 7 weights and 2 norms), on a tiny random model; the frozen layer gets none;
 *  3. periods and memory: begin_step switches exactly every K updates; the parameters are the
 *     period's gamma layers (their numel counted from the config), the optimizer's moments hold
 *     gamma layers and never grow over 20 periods; the checkpoint state holds the layers
 *     trained in earlier periods that are frozen now, and nothing else;
 *  4. training: AdamW updates change exactly the layers sampled so far and leave every other
 *     tensor (frozen layers, embeddings, LM head, final norm) bit-identical; the model written
 *     by llama_save_hf reloads to the same values, and for a bf16 checkpoint the tensors that
 *     were not trained keep the file's bytes.
 * With PEFT_LISA_DRIVER=DIR it is the driver of tests/parity/test_lisa_parity.py: it reads
 * DIR/model and DIR/batch.safetensors ("ids", "targets", optional "pos"), creates LISA
 * (PEFT_LISA_GAMMA, PEFT_LISA_INTERVAL, PEFT_LISA_SEED), takes PEFT_DRIVER_STEPS updates
 * (PEFT_DRIVER_LR, PEFT_DRIVER_WD) and writes DIR/out.safetensors ("loss", "losses" [steps],
 * "layers" I32 [steps, gamma], "grad.<key>" of the first update's parameters) and the trained
 * model to DIR/out_model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/llama.h"
#include "check.h"
#include "driver.h"
#include "methods/adapter_set.h"
#include "methods/lisa.h"
#include "models/llama_export.h"
#include "tiny_model.h"
#include "train/optim.h"

static double env_num(const char *name, double dflt) {
    const char *v = getenv(name);
    return v ? atof(v) : dflt;
}

/* ---- 1. sampling ----------------------------------------------------------------- */

static void check_sampling(void) {
    enum { L = 7, G = 3, PERIODS = 7000 };
    int subset_count[1 << L] = {0}, layer_count[L] = {0}, ok = 1, differs = 0;
    for (long p = 0; p < PERIODS; p++) {
        int mask = 0, next_slot = 0;
        for (int l = 0; l < L; l++) {
            int slot = lisa_layer_slot(42, p, L, G, l);
            if (slot < 0) continue;
            ok &= slot == next_slot++; /* slots number the drawn layers in ascending order */
            mask |= 1 << l;
            layer_count[l]++;
        }
        ok &= next_slot == G;
        subset_count[mask]++;
        for (int l = 0; l < L; l++) {
            ok &= lisa_layer_slot(42, p, L, G, l) == lisa_layer_slot(42, p, L, G, l);
            differs |= (lisa_layer_slot(42, p, L, G, l) >= 0) != (lisa_layer_slot(43, p, L, G, l) >= 0);
        }
    }
    CHECK_MSG(ok, "a period did not draw %d distinct layers with slots 0..%d in ascending order", G, G - 1);
    CHECK_MSG(differs, "seeds 42 and 43 drew the same layers");
    /* 35 subsets, each with probability 1/35: sigma = sqrt(n p (1 - p)) */
    double e_sub = PERIODS / 35.0, s_sub = sqrt(PERIODS * (1 / 35.0) * (34 / 35.0)), worst_sub = 0;
    int subsets = 0;
    for (int mask = 0; mask < (1 << L); mask++) {
        if (!subset_count[mask]) continue;
        subsets++;
        worst_sub = fmax(worst_sub, fabs(subset_count[mask] - e_sub) / s_sub);
    }
    double e_l = PERIODS * (double)G / L, s_l = sqrt(PERIODS * (G / (double)L) * (1 - G / (double)L)), worst_l = 0;
    for (int l = 0; l < L; l++) worst_l = fmax(worst_l, fabs(layer_count[l] - e_l) / s_l);
    CHECK_MSG(subsets == 35 && worst_sub < 5, "%d of 35 subsets drawn, worst %.1f sigma", subsets, worst_sub);
    CHECK_MSG(worst_l < 5, "layer frequencies off by %.1f sigma", worst_l);
    printf("sampling: L %d gamma %d, %d periods: all 35 subsets, worst %.1f sigma (subsets), %.1f sigma (layers)\n", L, G,
           PERIODS, worst_sub, worst_l);
}

/* ---- a tiny model with LISA ---------------------------------------------------------- */

static peft_adapter_set *lisa_set(peft_llama *m, int gamma, long interval, uint64_t seed, int max_rows) {
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.method, "lisa");
    strcpy(cfg.target_modules, "all-linear");
    cfg.opts.lisa_gamma = gamma;
    cfg.opts.lisa_interval = interval;
    cfg.opts.seed = seed;
    peft_adapter_set *set = NULL;
    peft_err err = {0};
    int rc = peft_adapter_set_create(&m->base, &cfg, max_rows, &set, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return set;
}

/* Trainable numel of one decoder layer, from the config: 7 projections and 2 norms. */
static size_t layer_numel(const peft_llama_config *c) {
    size_t C = c->hidden_size, F = c->intermediate_size, QD = (size_t)c->n_heads * c->head_dim,
           KD = (size_t)c->n_kv_heads * c->head_dim;
    return QD * C + 2 * KD * C + C * QD + 3 * F * C + 2 * C;
}

/* `steps` updates on one batch in the trainer's order: begin_step (the optimizer restarts when
 * the parameters changed), zero grad, forward, backward, AdamW. losses [steps] and layers
 * [steps * gamma] (the layers each update trained); grads0 (or NULL): the first update's
 * gradients, parameters back to back. */
static int lisa_steps(peft_llama *m, peft_adapter_set *set, peft_adamw *opt, llama_acts *a, const int32_t *ids,
                      const int32_t *pos, const int32_t *tgt, int steps, double lr, float *losses, int *layers, int gamma,
                      float *grads0, peft_err *err) {
    int rc = PEFT_OK;
    for (int s = 0; s < steps && rc == PEFT_OK; s++) {
        int changed = peft_adapter_set_begin_step(set, s, err);
        if (changed < 0) return changed;
        peft_named_param *p = peft_adapter_set_params(set);
        int np = peft_adapter_set_n_params(set);
        if (changed && (rc = peft_adamw_rebind(opt, p, np, err))) return rc;
        CHECK(peft_adapter_set_active_layers(set, layers + (size_t)s * gamma, gamma) == gamma);
        peft_adapter_set_zero_grad(set);
        double loss;
        int counted;
        if ((rc = llama_forward(m, a, ids, pos, tgt, &loss, &counted, err))) return rc;
        llama_backward(m, a, ids, tgt, counted);
        losses[s] = (float)loss;
        for (int i = 0, off = 0; s == 0 && grads0 && i < np; off += (int)p[i].p.numel, i++)
            memcpy(grads0 + off, p[i].p.grad, p[i].p.numel * sizeof(float));
        peft_adamw_step(opt, lr);
    }
    return rc;
}

static void random_batch(int32_t *ids, int32_t *tgt, int n, int V, uint64_t seed) {
    peft_rng r;
    peft_rng_seed(&r, seed, 9);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)peft_rng_below(&r, (uint32_t)V), tgt[i] = (int32_t)peft_rng_below(&r, (uint32_t)V);
}

/* ---- 2. gradients -------------------------------------------------------------------- */

static double model_loss(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *tgt) {
    double loss;
    int counted;
    peft_err err;
    llama_forward(m, a, ids, NULL, tgt, &loss, &counted, &err);
    return loss;
}

static void check_gradients(const char *model_dir) {
    enum { B = 2, T = 6 };
    peft_llama *m;
    peft_err err = {0};
    CHECK_MSG(llama_load(model_dir, &m, &err) == 0, "%s", err.msg);
    peft_adapter_set *set = lisa_set(m, 1, 3, 7, B * T);
    llama_acts a;
    CHECK(llama_acts_alloc(m, B, T, 1, 1, &a, &err) == 0);
    int32_t ids[B * T], tgt[B * T];
    random_batch(ids, tgt, B * T, m->cfg.vocab_size, 3);
    int active;
    CHECK(peft_adapter_set_active_layers(set, &active, 1) == 1);
    int frozen = 1 - active;
    CHECK_MSG(m->layers[frozen].attn_norm.grad == NULL && m->layers[frozen].mlp_norm.grad == NULL, "the frozen layer's norms get gradients");
    peft_adapter_set_zero_grad(set);
    double loss;
    int counted;
    CHECK(llama_forward(m, &a, ids, NULL, tgt, &loss, &counted, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    peft_named_param *p = peft_adapter_set_params(set);
    int np = peft_adapter_set_n_params(set), norms = 0;
    char frozen_key[64];
    snprintf(frozen_key, sizeof frozen_key, ".layers.%d.", frozen);
    double worst = 0;
    for (int i = 0; i < np; i++) {
        CHECK_MSG(!strstr(p[i].key, frozen_key), "%s of the frozen layer is a parameter", p[i].key);
        norms += strstr(p[i].key, "layernorm") != NULL;
        double gmax = 0;
        for (size_t j = 0; j < p[i].p.numel; j++) gmax = fmax(gmax, fabs(p[i].p.grad[j]));
        for (int k = 0; k < 8; k++) {
            size_t j = ((size_t)k * 7919) % p[i].p.numel;
            float old = p[i].p.data[j], eps = 1e-2f;
            p[i].p.data[j] = old + eps;
            double lp = model_loss(m, &a, ids, tgt);
            p[i].p.data[j] = old - eps;
            double lm = model_loss(m, &a, ids, tgt);
            p[i].p.data[j] = old;
            double num = (lp - lm) / (2 * eps), e = fabs(num - p[i].p.grad[j]) / fmax(fmax(1e-3, 0.1 * gmax), fabs(num));
            CHECK_MSG(e < 5e-3, "%s[%zu]: gradient %.6g, central difference %.6g", p[i].key, j, p[i].p.grad[j], num);
            worst = fmax(worst, e);
        }
    }
    CHECK_MSG(np == 9 && norms == 2, "%d parameters (%d norms), expected 7 weights and 2 norms", np, norms);
    printf("gradients: layer %d active, %d tensors (2 norms), worst central-difference rel err %.1e\n", active, np, worst);
    llama_acts_free(&a);
    peft_adapter_set_free(set);
    llama_free(m);
}

/* ---- 3. periods and memory ---------------------------------------------------------- */

static void check_periods(const char *model_dir) {
    peft_llama *m;
    peft_err err = {0};
    CHECK_MSG(llama_load(model_dir, &m, &err) == 0, "%s", err.msg);
    const long K = 3;
    const uint64_t seed = 5;
    peft_adapter_set *set = lisa_set(m, 1, K, seed, 4);
    int L = m->cfg.n_layers;
    size_t per_layer = layer_numel(&m->cfg);
    peft_adamw opt;
    CHECK(peft_adamw_init(&opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), 0.9, 0.999, 1e-8, 0, &err) == 0);
    size_t cap0 = opt.capacity;
    int switches_ok = 1, lists_ok = 1, state_ok = 1, trained[64] = {0};
    for (long step = 0; step < 20 * K; step++) {
        int changed = peft_adapter_set_begin_step(set, step, &err);
        /* the first call reports the lists as new; afterwards exactly at multiples of K */
        switches_ok &= changed == (step == 0 || step % K == 0);
        if (changed) CHECK(peft_adamw_rebind(&opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), &err) == 0);
        int layer;
        CHECK(peft_adapter_set_active_layers(set, &layer, 1) == 1);
        lists_ok &= lisa_layer_slot(seed, step / K, L, 1, layer) == 0 && peft_adapter_set_numel(set) == per_layer;
        trained[layer] = 1;
        /* state: exactly the tensors (7 weights + 2 norms each) of the other layers trained so far */
        int expect = 0;
        for (int l = 0; l < L; l++) expect += l != layer && trained[l] ? 9 : 0;
        state_ok &= peft_adapter_set_n_state(set) == expect;
    }
    CHECK_MSG(switches_ok, "begin_step did not report a change exactly every %ld updates", K);
    CHECK_MSG(lists_ok, "the parameters were not the sampled layer's %zu values", per_layer);
    CHECK_MSG(state_ok, "the checkpoint state is not the earlier-trained, now frozen layers");
    CHECK_MSG(cap0 == per_layer && opt.capacity == per_layer, "AdamW holds %zu then %zu values per moment, one layer is %zu", cap0,
              opt.capacity, per_layer);
    printf("periods: K %ld over 20 periods; parameters and AdamW moments %zu values each (1 of %d layers, %.1f%% of the model)\n", K,
           per_layer, L, 100.0 * per_layer / m->base.n_params);
    peft_adamw_free(&opt);
    peft_adapter_set_free(set);
    llama_free(m);
}

/* ---- 4. training and the written model ---------------------------------------------- */

/* The model's current values of every tensor of its checkpoint, back to back (f32). */
static float *snapshot(peft_llama *m, size_t *n_out) {
    size_t n = 0;
    for (int f = 0; f < m->weights->n_files; f++)
        for (int i = 0; i < m->weights->files[f]->n_tensors; i++) n += m->weights->files[f]->tensors[i].numel;
    float *v = malloc(n * sizeof(float)), *d = v;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        peft_llama_layer *ly = &m->layers[l];
        for (int s = 0; s < SITES_PER_LAYER; s++) {
            size_t k = (size_t)ly->sites[s].in_features * ly->sites[s].out_features;
            memcpy(d, ly->sites[s].weight, k * sizeof(float)), d += k;
        }
        memcpy(d, ly->attn_norm.weight, m->cfg.hidden_size * sizeof(float)), d += m->cfg.hidden_size;
        memcpy(d, ly->mlp_norm.weight, m->cfg.hidden_size * sizeof(float)), d += m->cfg.hidden_size;
    }
    size_t VC = (size_t)m->cfg.vocab_size * m->cfg.hidden_size;
    memcpy(d, m->embed, VC * sizeof(float)), d += VC;
    memcpy(d, m->lm_head, VC * sizeof(float)), d += VC;
    memcpy(d, m->final_norm.weight, m->cfg.hidden_size * sizeof(float)), d += m->cfg.hidden_size;
    *n_out = (size_t)(d - v);
    return v;
}

/* The layer every one of the first `periods` periods draws (gamma 1), or -1 when they differ. */
static int one_layer_only(uint64_t seed, int L, long periods) {
    int layer = -1;
    for (long p = 0; p < periods; p++)
        for (int l = 0; l < L; l++)
            if (lisa_layer_slot(seed, p, L, 1, l) == 0) {
                if (p > 0 && l != layer) return -1;
                layer = l;
            }
    return layer;
}

static void check_training(const char *model_dir, const char *out_dir, const char *what) {
    enum { B = 2, T = 6, STEPS = 6 };
    const long K = 2;
    peft_llama *m;
    peft_err err = {0};
    CHECK_MSG(llama_load(model_dir, &m, &err) == 0, "%s", err.msg);
    int L = m->cfg.n_layers;
    /* a seed whose 3 periods all draw one layer, so that "frozen stays frozen" is tested */
    uint64_t seed = 1;
    while (one_layer_only(seed, L, STEPS / K) < 0) seed++;
    size_t n0, n1;
    float *before = snapshot(m, &n0);
    peft_adapter_set *set = lisa_set(m, 1, K, seed, B * T);
    llama_acts a;
    CHECK(llama_acts_alloc(m, B, T, 1, 1, &a, &err) == 0);
    int32_t ids[B * T], tgt[B * T], layers[STEPS];
    float losses[STEPS];
    random_batch(ids, tgt, B * T, m->cfg.vocab_size, 4);
    peft_adamw opt;
    CHECK(peft_adamw_init(&opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), 0.9, 0.999, 1e-8, 0.01, &err) == 0);
    CHECK_MSG(lisa_steps(m, set, &opt, &a, ids, NULL, tgt, STEPS, 1e-2, losses, layers, 1, NULL, &err) == 0, "%s", err.msg);
    float *after = snapshot(m, &n1);
    /* per layer: changed iff sampled in some period; everything after the layers unchanged */
    size_t off = 0, per_layer = layer_numel(&m->cfg);
    int ok = 1, n_trained = 0;
    for (int l = 0; l < L; l++, off += per_layer) {
        int sampled = 0;
        for (int s = 0; s < STEPS; s++) sampled |= layers[s] == l;
        int same = !memcmp(before + off, after + off, per_layer * sizeof(float));
        ok &= sampled != same;
        n_trained += sampled;
        CHECK_MSG(sampled != same, "%s: layer %d was %s but is %s", what, l, sampled ? "trained" : "frozen",
                  same ? "unchanged" : "changed");
    }
    int rest_same = !memcmp(before + off, after + off, (n0 - off) * sizeof(float));
    CHECK_MSG(rest_same, "%s: embeddings, LM head or final norm changed", what);
    CHECK_MSG(n_trained == 1, "%s: seed %llu trained %d layers, expected 1 (the search above)", what, (unsigned long long)seed, n_trained);
    CHECK_MSG(losses[STEPS - 1] < losses[0], "%s: loss %.4f -> %.4f did not fall", what, losses[0], losses[STEPS - 1]);
    /* the written model reloads to the trained values */
    CHECK_MSG(peft_adapter_set_save(set, out_dir, &err) == 0, "%s", err.msg);
    peft_llama *m2;
    CHECK_MSG(llama_load(out_dir, &m2, &err) == 0, "%s", err.msg);
    size_t n2;
    float *reloaded = snapshot(m2, &n2), worst = 0;
    for (size_t i = 0; i < n1; i++) worst = fmaxf(worst, fabsf(reloaded[i] - after[i]) / fmaxf(1.0f, fabsf(after[i])));
    int bf16 = m->weights->files[0]->tensors[0].dtype == PEFT_BF16;
    CHECK_MSG(n2 == n1 && worst <= (bf16 ? 4e-3f : 0.0f), "%s: the written model differs from the trained one by %g", what, worst);
    /* bf16: tensors that did not change keep the base file's bytes */
    int kept = 1;
    for (int i = 0; i < m->weights->files[0]->n_tensors; i++) {
        const peft_st_tensor *t0 = &m->weights->files[0]->tensors[i];
        const peft_st_tensor *t2 = peft_weights_find(m2->weights, t0->name, NULL);
        int trained_tensor = strstr(t0->name, "layers.") && atoi(strstr(t0->name, "layers.") + 7) == layers[0];
        if (!trained_tensor) kept &= t2 && t2->nbytes == t0->nbytes && !memcmp(t2->data, t0->data, t0->nbytes);
    }
    CHECK_MSG(kept, "%s: an untrained tensor's bytes differ in the written model", what);
    printf("training (%s): layer %d trained over %d updates (K %ld), the other %d layers and the embeddings bit-identical; "
           "loss %.4f -> %.4f; written model max rel diff %.1e\n", what, layers[0], STEPS, K, L - 1, losses[0], losses[STEPS - 1], worst);
    free(before), free(after), free(reloaded);
    llama_free(m2);
    peft_adamw_free(&opt);
    llama_acts_free(&a);
    peft_adapter_set_free(set);
    llama_free(m);
}

/* ---- the parity driver ------------------------------------------------------------------ */

static int drive(const char *dir, peft_err *err) {
    char path[4200];
    peft_llama *m;
    peft_st_file *batch;
    int rc = driver_open(dir, &m, &batch, err);
    if (rc) return rc;
    const peft_st_tensor *ids = peft_st_find(batch, "ids"), *tgt = peft_st_find(batch, "targets"), *pos = peft_st_find(batch, "pos");
    if (!tgt) return peft_fail(err, PEFT_EFORMAT, "%s/batch.safetensors: needs I32 targets [B, T]", dir);
    int B = (int)ids->shape[0], T = (int)ids->shape[1], steps = (int)env_num("PEFT_DRIVER_STEPS", 4),
        gamma = (int)env_num("PEFT_LISA_GAMMA", 1);
    peft_adapter_set *set = lisa_set(m, gamma, (long)env_num("PEFT_LISA_INTERVAL", 2), (uint64_t)env_num("PEFT_LISA_SEED", 1), B * T);
    if (!set) return peft_fail(err, PEFT_EINVAL, "LISA could not be created");
    llama_acts a;
    if ((rc = llama_acts_alloc(m, B, T, 1, 1, &a, err))) return rc;
    int np = peft_adapter_set_n_params(set);
    peft_named_param *p0 = malloc((size_t)np * sizeof *p0); /* the first period's list, for the gradients' names */
    memcpy(p0, peft_adapter_set_params(set), (size_t)np * sizeof *p0);
    peft_adamw opt;
    rc = peft_adamw_init(&opt, peft_adapter_set_params(set), np, 0.9, 0.999, 1e-8, env_num("PEFT_DRIVER_WD", 0.0), err);
    float *grads = malloc(peft_adapter_set_numel(set) * sizeof(float)), *losses = malloc((size_t)steps * sizeof(float));
    int32_t *layers = malloc((size_t)steps * gamma * sizeof(int32_t));
    if (rc == PEFT_OK)
        rc = lisa_steps(m, set, &opt, &a, ids->data, pos ? pos->data : NULL, tgt->data, steps, env_num("PEFT_DRIVER_LR", 1e-2), losses,
                        layers, gamma, grads, err);
    peft_st_entry *e = calloc((size_t)np + 3, sizeof *e);
    char(*names)[300] = calloc((size_t)np, sizeof *names);
    size_t off = 0;
    for (int i = 0; i < np; off += p0[i].p.numel, i++) {
        snprintf(names[i], sizeof names[0], "grad.%s", p0[i].key);
        e[i] = (peft_st_entry){.name = names[i], .dtype = PEFT_F32, .ndim = p0[i].p.ndim, .data = grads + off};
        memcpy(e[i].shape, p0[i].p.shape, sizeof p0[i].p.shape);
    }
    e[np] = (peft_st_entry){.name = "loss", .dtype = PEFT_F32, .ndim = 1, .shape = {1}, .data = losses};
    e[np + 1] = (peft_st_entry){.name = "losses", .dtype = PEFT_F32, .ndim = 1, .shape = {steps}, .data = losses};
    e[np + 2] = (peft_st_entry){.name = "layers", .dtype = PEFT_I32, .ndim = 2, .shape = {steps, gamma}, .data = layers};
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_write(path, e, np + 3, NULL, 0, err);
    snprintf(path, sizeof path, "%s/out_model", dir);
    if (rc == PEFT_OK) rc = peft_adapter_set_save(set, path, err);
    free(e), free(names), free(grads), free(losses), free(layers), free(p0);
    peft_adamw_free(&opt);
    llama_acts_free(&a);
    peft_adapter_set_free(set);
    peft_st_close(batch);
    llama_free(m);
    return rc;
}

int main(void) {
    const char *driver_dir = getenv("PEFT_LISA_DRIVER");
    if (driver_dir) {
        peft_err err = {0};
        if (drive(driver_dir, &err)) {
            fprintf(stderr, "driver: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    char dir[] = "/tmp/peft_lisa_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char f32[600], bf16[600], out32[600], out16[600];
    snprintf(f32, sizeof f32, "%s/f32", dir);
    snprintf(bf16, sizeof bf16, "%s/bf16", dir);
    snprintf(out32, sizeof out32, "%s/out_f32", dir);
    snprintf(out16, sizeof out16, "%s/out_bf16", dir);
    CHECK(tiny_model_write(f32, PEFT_F32, 11) == 0);
    CHECK(tiny_model_write(bf16, PEFT_BF16, 11) == 0);
    check_sampling();
    check_gradients(f32);
    check_periods(f32);
    check_training(f32, out32, "f32");
    check_training(bf16, out16, "bf16");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_report("test_lisa");
}
