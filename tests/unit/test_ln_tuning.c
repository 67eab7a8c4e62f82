/* test_ln_tuning.c: LayerNorm tuning (PEFT LN_TUNING) as a model-level method: the gradient
 * of every norm weight through the whole model matches central differences, freeing the set
 * restores the checkpoint's norms, and save -> load keeps the trained copies bit for bit under
 * PEFT's keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "methods/adapter_set.h"
#include "tiny_model.h"

static double loss_of(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *pos, const int32_t *tgt) {
    double loss;
    int counted;
    peft_err err;
    CHECK(llama_forward(m, a, ids, pos, tgt, &loss, &counted, &err) == 0);
    return loss;
}

int main(void) {
    char dir[] = "/tmp/peft_ln_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(tiny_model_write(dir, PEFT_F32, 8) == 0);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(dir, &m, &err) == 0, "%s", err.msg);
    float *base0 = m->layers[1].mlp_norm.weight;
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.method, "ln_tuning");
    peft_adapter_set *set;
    CHECK_MSG(peft_adapter_set_create(&m->base, &cfg, 12, &set, &err) == 0, "%s", err.msg);
    CHECK(peft_adapter_set_n_params(set) == 5); /* 2 layers x 2 norms + the final norm */
    CHECK(m->layers[1].mlp_norm.weight != base0 && m->layers[1].mlp_norm.weight[3] == base0[3]);
    peft_named_param *p = peft_adapter_set_params(set);
    int found = 0;
    for (int i = 0; i < 5; i++) found |= !strcmp(p[i].key, "base_model.model.model.layers.1.post_attention_layernorm.ln_tuning_layers.weight");
    CHECK(found);
    peft_rng r;
    peft_rng_seed(&r, 2, 2);
    for (int i = 0; i < 5; i++)
        for (size_t j = 0; j < p[i].p.numel; j++) p[i].p.data[j] += 0.2f * (peft_rng_uniform(&r) - 0.5f);

    int32_t ids[12] = {1, 5, 9, 2, 33, 7, 7, 0, 36, 4, 4, 20}, pos[12] = {0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2};
    int32_t tgt[12] = {5, 9, 2, 33, 7, -1, 0, 36, -1, 4, 20, 3};
    llama_acts a;
    CHECK(llama_acts_alloc(m, 2, 6, 1, 1, &a, &err) == 0);
    peft_adapter_set_zero_grad(set);
    double loss;
    int counted;
    CHECK(llama_forward(m, &a, ids, pos, tgt, &loss, &counted, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    double worst = 0;
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 4; k++) {
            size_t j = (size_t)(k * 5 + i) % p[i].p.numel;
            float old = p[i].p.data[j], eps = 5e-3f;
            p[i].p.data[j] = old + eps;
            double lp = loss_of(m, &a, ids, pos, tgt);
            p[i].p.data[j] = old - eps;
            double lm = loss_of(m, &a, ids, pos, tgt);
            p[i].p.data[j] = old;
            double num = (lp - lm) / (2 * eps);
            worst = fmax(worst, fabs(num - p[i].p.grad[j]) / fmax(1e-2, fabs(num)));
        }
    CHECK_MSG(worst < 1e-2, "norm weight gradient rel err %g", worst);
    printf("LN tuning: max rel err of the norm gradients vs central differences %.2e\n", worst);

    char adir[700];
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    CHECK(peft_adapter_set_save(set, adir, &err) == 0);
    float keep = p[2].p.data[7];
    peft_adapter_set_free(set);
    CHECK(m->layers[1].mlp_norm.weight == base0 && m->layers[1].mlp_norm.grad == NULL); /* restored */
    CHECK_MSG(peft_adapter_set_load(adir, &m->base, 0, &set, &err) == 0, "%s", err.msg);
    CHECK(peft_adapter_set_params(set)[2].p.data[7] == keep);
    peft_adapter_set_free(set);
    llama_acts_free(&a);
    llama_free(m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_report("test_ln_tuning");
}
