/* test_merge.c: `peft merge` writes a complete HF checkpoint whose logits equal the base
 * model + adapter (1e-5 relative, f32), keeps every tensor name and dtype of the base (bf16
 * stays bf16), and unmerging in memory restores the base weights. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "methods/adapter_set.h"
#include "tiny_model.h"

static void logits_of(peft_llama *m, const int32_t *ids, int T, float *out) {
    llama_acts a;
    peft_err err;
    CHECK(llama_acts_alloc(m, 1, T, 0, 0, &a, &err) == 0);
    CHECK(llama_forward(m, &a, ids, NULL, NULL, NULL, NULL, &err) == 0);
    memcpy(out, a.logits, (size_t)T * TINY_V * sizeof(float));
    llama_acts_free(&a);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double d = 0, mx = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), mx = fmax(mx, fabs(b[i]));
    return d / mx;
}

static void run(const char *bin, peft_dtype dtype) {
    char root[] = "/tmp/peft_merge_XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    char base[600], adapter[600], merged[600], cmd[2400];
    snprintf(base, sizeof base, "%s/base", root);
    snprintf(adapter, sizeof adapter, "%s/adapter", root);
    snprintf(merged, sizeof merged, "%s/merged", root);
    CHECK(tiny_model_write(base, dtype, 5) == 0);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(base, &m, &err) == 0, "%s", err.msg);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.target_modules, "q_proj,v_proj,down_proj");
    cfg.opts.rank = 4;
    cfg.opts.alpha = 8;
    peft_adapter_set *set;
    CHECK(peft_adapter_set_create(&m->base, &cfg, 0, &set, &err) == 0);
    peft_rng r;
    peft_rng_seed(&r, 3, 3);
    peft_named_param *p = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set); i++) tiny_fill(p[i].p.data, p[i].p.numel, 0.3f, &r);
    CHECK(peft_adapter_set_save(set, adapter, &err) == 0);
    int32_t ids[9] = {1, 5, 9, 2, 33, 7, 7, 0, 36};
    float *with_adapter = malloc(9 * TINY_V * sizeof(float)), *from_merged = malloc(9 * TINY_V * sizeof(float)),
          *base_logits = malloc(9 * TINY_V * sizeof(float));
    CHECK(peft_adapter_set_reserve(set, 9, &err) == 0);
    logits_of(m, ids, 9, with_adapter);

    /* in-memory merge and unmerge restore the base */
    peft_site *q = llama_find_site(m, "model.layers.1.self_attn.q_proj");
    float *w0 = malloc(16 * 16 * sizeof(float));
    memcpy(w0, q->weight, 16 * 16 * sizeof(float));
    CHECK(peft_adapter_set_merge(set, +1, &err) == 0);
    CHECK(max_rel(q->weight, w0, 256) > 1e-3); /* the merge changed W */
    CHECK(peft_adapter_set_merge(set, -1, &err) == 0);
    CHECK_MSG(max_rel(q->weight, w0, 256) < 1e-6, "unmerge error %g", max_rel(q->weight, w0, 256));
    peft_adapter_set_free(set);
    logits_of(m, ids, 9, base_logits);
    llama_free(m);

    snprintf(cmd, sizeof cmd, "'%s' merge --model %s --adapter %s --out %s > /dev/null", bin, base, adapter, merged);
    CHECK(system(cmd) == 0);
    CHECK_MSG(llama_load(merged, &m, &err) == 0, "%s", err.msg);
    logits_of(m, ids, 9, from_merged);
    double e = max_rel(from_merged, with_adapter, 9 * TINY_V), moved = max_rel(from_merged, base_logits, 9 * TINY_V);
    /* f32: exact merge; bf16/f16: the merged weights are rounded to the stored dtype */
    double tol = dtype == PEFT_F32 ? 1e-5 : 2e-2;
    CHECK_MSG(e < tol, "%s merged vs base+adapter: rel err %g", peft_dtype_name(dtype), e);
    CHECK(moved > 10 * e); /* and the adapter really changed the outputs */
    printf("%s: merged checkpoint vs base+adapter max rel err %.2e (adapter moved logits by %.2e)\n", peft_dtype_name(dtype), e, moved);
    const peft_st_tensor *t = peft_weights_find(m->weights, "model.layers.0.mlp.down_proj.weight", NULL);
    CHECK(t && t->dtype == dtype);
    CHECK(peft_weights_find(m->weights, "lm_head.weight", NULL) != NULL);
    llama_free(m);
    /* the merged directory carries the config; merging into the base directory is refused */
    snprintf(cmd, sizeof cmd, "%s/config.json", merged);
    CHECK(peft_file_exists(cmd));
    snprintf(cmd, sizeof cmd, "'%s' merge --model %s --adapter %s --out %s 2> /dev/null", bin, base, adapter, base);
    CHECK(system(cmd) != 0);
    free(with_adapter), free(from_merged), free(base_logits), free(w0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0);
}

int main(void) {
    const char *bin = getenv("PEFT_BIN");
    if (!bin) CHECK_SKIP("PEFT_BIN is not set (run through ctest)");
    run(bin, PEFT_F32);
    run(bin, PEFT_BF16);
    return check_report("test_merge");
}
