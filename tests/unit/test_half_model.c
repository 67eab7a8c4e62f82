/* test_half_model.c: the model with 16-bit compute for its frozen matmuls (llama_use_half,
 * bf16 and f16) stays close to f32 — the rounding of the format, no more: logits within 2e-2
 * (bf16) / 5e-3 (f16) of their norm, LoRA gradients pointing the same way (cosine > 0.99) with
 * the same size, the loss within 1%. Also: mapped f32 weights keep their values after their
 * pages are given back (one changed in memory beforehand, a copy-on-write page, too); widened
 * ones (a bf16 checkpoint) are freed for LoRA but kept for DoRA, which reads W; a second
 * format is refused, and so is a merge. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "kernels/kernels.h"
#include "methods/adapter_set.h"
#include "tiny_model.h"

/* logits and the concatenated LoRA gradients of one forward/backward */
static void run(peft_llama *m, peft_adapter_set *set, const int32_t *ids, const int32_t *tgt, float *logits, float *grads,
                double *loss) {
    llama_acts a;
    peft_err err;
    int counted;
    CHECK(llama_acts_alloc(m, 2, 8, 1, 1, &a, &err) == 0);
    peft_adapter_set_zero_grad(set);
    CHECK(llama_forward(m, &a, ids, NULL, NULL, NULL, NULL, &err) == 0); /* logits only without targets */
    memcpy(logits, a.logits, 16 * TINY_V * sizeof(float));
    CHECK(llama_forward(m, &a, ids, NULL, tgt, loss, &counted, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    size_t off = 0;
    peft_named_param *p = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set); i++) {
        memcpy(grads + off, p[i].p.grad, p[i].p.numel * sizeof(float));
        off += p[i].p.numel;
    }
    llama_acts_free(&a);
}

static void check_format(const char *dir, const char *method, int mapped, const peft_half_matmul *H, double logit_tol) {
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(dir, &m, &err) == 0, "%s", err.msg);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.target_modules, "all-linear");
    strcpy(cfg.method, method);
    cfg.opts.rank = 4;
    peft_adapter_set *set;
    CHECK(peft_adapter_set_create(&m->base, &cfg, 16, &set, &err) == 0);
    peft_rng r;
    peft_rng_seed(&r, 5, 5);
    peft_named_param *p = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set); i++) tiny_fill(p[i].p.data, p[i].p.numel, 0.3f, &r);
    size_t n = peft_adapter_set_numel(set);
    int32_t ids[16], tgt[16];
    for (int i = 0; i < 16; i++) ids[i] = (int32_t)peft_rng_below(&r, TINY_V), tgt[i] = (int32_t)peft_rng_below(&r, TINY_V);
    float *l32 = malloc(16 * TINY_V * sizeof(float)), *l16 = malloc(16 * TINY_V * sizeof(float));
    float *g32 = malloc(n * sizeof(float)), *g16 = malloc(n * sizeof(float));
    double loss32, loss16;
    /* a changed value in a mapped weight (now a private page) and a copy of another site's */
    peft_site *s0 = llama_site(m, 0), *s1 = llama_site(m, 1);
    const size_t n1 = (size_t)s1->out_features * s1->in_features;
    float *w1 = malloc(n1 * sizeof(float));
    memcpy(w1, s1->weight, n1 * sizeof(float));
    if (mapped) s0->weight[0] = 0.125f;
    run(m, set, ids, tgt, l32, g32, &loss32);
    CHECK(llama_use_half(m, H, 1, &err) == 0);
    if (mapped) CHECK(s0->weight[0] == 0.125f && memcmp(w1, s1->weight, n1 * sizeof(float)) == 0);
    else if (!strcmp(method, "dora")) CHECK(s0->weight && memcmp(w1, s1->weight, n1 * sizeof(float)) == 0);
    else CHECK(!s0->weight && !s1->weight && !m->lm_head && m->embed); /* widened copies freed */
    CHECK(llama_use_half(m, H == &peft_half_f16 ? &peft_half_bf16 : &peft_half_f16, 1, &err) == PEFT_EINVAL);
    run(m, set, ids, tgt, l16, g16, &loss16);
    double d = 0, nrm = 0, dot = 0, n32 = 0, n16 = 0;
    for (int i = 0; i < 16 * TINY_V; i++) d += (l16[i] - l32[i]) * (l16[i] - l32[i]), nrm += l32[i] * l32[i];
    for (size_t i = 0; i < n; i++) dot += (double)g16[i] * g32[i], n32 += (double)g32[i] * g32[i], n16 += (double)g16[i] * g16[i];
    double rel = sqrt(d / nrm), cosine = dot / sqrt(n32 * n16), ratio = sqrt(n16 / n32);
    printf("%s vs f32: logits rel err %.2e, adapter gradient cosine %.6f, norm ratio %.4f, loss %.5f vs %.5f\n", H->name, rel,
           cosine, ratio, loss16, loss32);
    CHECK(rel < logit_tol && rel > 0); /* rel > 0: the 16-bit path really ran */
    CHECK(cosine > 0.99 && fabs(ratio - 1) < 0.05);
    CHECK(fabs(loss16 - loss32) < 1e-2 * loss32);
    /* merging a model already in 16 bits is refused (its packed copies would go stale) */
    CHECK(peft_adapter_set_merge(set, +1, &err) == PEFT_EINVAL);
    peft_adapter_set_free(set);
    llama_free(m);
    free(l32), free(l16), free(g32), free(g16), free(w1);
}

int main(void) {
    char dir[] = "/tmp/peft_half_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(tiny_model_write(dir, PEFT_F32, 13) == 0);
    check_format(dir, "lora", 1, &peft_half_bf16, 2e-2);
    check_format(dir, "lora", 1, &peft_half_f16, 5e-3);
    CHECK(tiny_model_write(dir, PEFT_BF16, 13) == 0); /* widened at load */
    check_format(dir, "lora", 0, &peft_half_f16, 5e-3);
    check_format(dir, "dora", 0, &peft_half_f16, 5e-3);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_report("test_half_model");
}
