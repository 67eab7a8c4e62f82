/* test_prompt_tuning.c: prompt tuning and prefix tuning, the virtual-token methods.
 *  - the gradient of the trained tensor through the whole model matches central differences;
 *  - cached decoding feeds the virtual tokens first: its logits equal the full forward's;
 *  - save -> load keeps the tensor bit for bit, in PEFT's format (key "prompt_embeddings");
 *  - the real PEFT prompt-tuning adapter for SmolLM2-135M (../shared) loads against
 *    SmolLM2-135M's config.json and is refused by a model of another width. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "methods/adapter_set.h"
#include "tiny_model.h"

static double loss_of(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *tgt) {
    double loss;
    int counted;
    peft_err err;
    CHECK(llama_forward(m, a, ids, NULL, tgt, &loss, &counted, &err) == 0);
    return loss;
}

static void gradient_and_decode(const char *method) {
    char dir[] = "/tmp/peft_prompt_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(tiny_model_write(dir, PEFT_F32, 21) == 0);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(dir, &m, &err) == 0, "%s", err.msg);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.method, method);
    cfg.opts.n_virtual = 3;
    cfg.opts.seed = 4;
    peft_adapter_set *set;
    CHECK_MSG(peft_adapter_set_create(&m->base, &cfg, 16, &set, &err) == 0, "%s", err.msg);
    CHECK(m->base.virt.n_virtual == 3 && peft_adapter_set_n_params(set) == 1);
    peft_named_param *p = peft_adapter_set_params(set);
    int prefix = !strcmp(method, "prefix_tuning");
    /* prefix: [3, layers * 2 * kv heads * head_dim] = [3, 2 * 2 * 2 * 4] */
    CHECK(!strcmp(p[0].key, "prompt_embeddings") && p[0].p.shape[0] == 3 && p[0].p.shape[1] == (prefix ? 32 : TINY_C));
    for (size_t i = 0; i < p[0].p.numel; i++) p[0].p.data[i] *= 0.3f; /* N(0,1) init, scaled to the tiny model */

    /* Rows: 3 placeholders (no loss), then data. */
    int B = 2, T = 8;
    int32_t ids[16] = {0, 0, 0, 5, 9, 2, 33, 7, 0, 0, 0, 1, 4, 4, 20, 36};
    int32_t tgt[16] = {-1, -1, 5, 9, 2, 33, 7, -1, -1, -1, 1, 4, 4, 20, 36, 3};
    llama_acts a;
    CHECK(llama_acts_alloc(m, B, T, 1, 1, &a, &err) == 0);
    peft_adapter_set_zero_grad(set);
    double loss;
    int counted;
    CHECK(llama_forward(m, &a, ids, NULL, tgt, &loss, &counted, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    double worst = 0;
    for (size_t k = 0; k < 12; k++) {
        size_t j = (k * 7) % p[0].p.numel;
        float old = p[0].p.data[j], eps = 5e-3f;
        p[0].p.data[j] = old + eps;
        double lp = loss_of(m, &a, ids, tgt);
        p[0].p.data[j] = old - eps;
        double lm = loss_of(m, &a, ids, tgt);
        p[0].p.data[j] = old;
        double num = (lp - lm) / (2 * eps);
        worst = fmax(worst, fabs(num - p[0].p.grad[j]) / fmax(1e-2, fabs(num)));
    }
    CHECK_MSG(worst < 1e-2, "%s gradient rel err %g", method, worst);
    printf("%s: max rel err of d(prompt_embeddings) vs central differences %.2e\n", method, worst);

    /* Cached decoding of row 0's data tokens (virtual tokens fed automatically). */
    llama_acts full;
    CHECK(llama_acts_alloc(m, 1, T, 0, 0, &full, &err) == 0);
    CHECK(llama_forward(m, &full, ids, NULL, NULL, NULL, NULL, &err) == 0);
    llama_kv_cache kv;
    CHECK(llama_kv_alloc(m, T - 3, 2, &kv, &err) == 0);
    CHECK(peft_adapter_set_reserve(set, 2, &err) == 0);
    float logits[TINY_V];
    double dd = 0;
    for (int t = 3; t < T; t++) {
        CHECK(llama_decode(m, &kv, &ids[t], 1, logits, &err) == 0);
        for (int v = 0; v < TINY_V; v++) dd = fmax(dd, fabs(logits[v] - full.logits[(size_t)t * TINY_V + v]));
    }
    CHECK_MSG(dd < 1e-5, "decode vs forward %g", dd);

    /* save -> load */
    char adir[700];
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    CHECK(peft_adapter_set_save(set, adir, &err) == 0);
    float *saved = malloc(p[0].p.numel * sizeof(float));
    memcpy(saved, p[0].p.data, p[0].p.numel * sizeof(float));
    peft_adapter_set_free(set);
    CHECK(m->base.virt.n_virtual == 0 && m->base.virt.emb == NULL && m->base.virt.prefix_kv == NULL);
    CHECK_MSG(peft_adapter_set_load(adir, &m->base, 0, &set, &err) == 0, "%s", err.msg);
    p = peft_adapter_set_params(set);
    CHECK(m->base.virt.n_virtual == 3 && !memcmp(saved, p[0].p.data, p[0].p.numel * sizeof(float)));
    char cfgpath[800];
    snprintf(cfgpath, sizeof cfgpath, "%s/adapter_config.json", adir);
    char *text;
    size_t len;
    CHECK(peft_read_file(cfgpath, &text, &len, &err) == 0);
    CHECK(strstr(text, prefix ? "\"PREFIX_TUNING\"" : "\"PROMPT_TUNING\"") && strstr(text, "\"num_virtual_tokens\":\t3") &&
          !strstr(text, "target_modules"));
    free(text);
    free(saved);
    peft_adapter_set_free(set);
    llama_kv_free(&kv);
    llama_acts_free(&full);
    llama_acts_free(&a);
    llama_free(m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

static void real_peft_file(const char *shared, const char *src) {
    char adapter[4096], cfg[4096];
    snprintf(adapter, sizeof adapter, "%s/models/prompt-tuning-smollm2-135m", shared);
    snprintf(cfg, sizeof cfg, "%s/tests/data/smollm2-135m-config.json", src);
    peft_err err = {0};
    peft_llama *m;
    CHECK(llama_load_shapes(cfg, &m, &err) == 0);
    peft_adapter_set *set;
    int rc = peft_adapter_set_load(adapter, &m->base, 0, &set, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK(m->base.virt.n_virtual == 16);
        const peft_adapter_config *c = peft_adapter_set_config(set);
        CHECK(!strcmp(c->method, "prompt_tuning") && !strcmp(c->base_model, "HuggingFaceTB/SmolLM2-135M"));
        CHECK(!strcmp(c->opts.init_text, "Classify the sentiment as positive, negative, or neutral:"));
        peft_named_param *p = peft_adapter_set_params(set);
        CHECK(p[0].p.shape[0] == 16 && p[0].p.shape[1] == 576);
        double norm = 0;
        for (size_t i = 0; i < p[0].p.numel; i++) norm += p[0].p.data[i] * p[0].p.data[i];
        CHECK(norm > 0);
        peft_adapter_set_free(set);
    }
    llama_free(m);
    /* The same file against a model of width 16 is refused, naming the tensor. */
    char dir[] = "/tmp/peft_prompt_real_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(tiny_model_write(dir, PEFT_F32, 1) == 0);
    CHECK(llama_load(dir, &m, &err) == 0);
    CHECK(peft_adapter_set_load(adapter, &m->base, 0, &set, &err) == PEFT_ESHAPE);
    CHECK_MSG(strstr(err.msg, "prompt_embeddings") != NULL, "%s", err.msg);
    CHECK(m->base.virt.n_virtual == 0); /* a failed load leaves the model as it was */
    llama_free(m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    gradient_and_decode("prompt_tuning");
    gradient_and_decode("prefix_tuning");
    const char *shared = getenv("PEFT_SHARED"), *src = getenv("PEFT_SRC");
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/models/prompt-tuning-smollm2-135m/adapter_config.json", shared ? shared : "../shared");
    if (src && peft_file_exists(probe)) real_peft_file(shared ? shared : "../shared", src);
    else CHECK_SKIP_PART("%s not found", probe);
    return check_report("test_prompt_tuning");
}
