/* test_model_iface.c: the model interface (models/model.h) over the llama family.
 *   - peft_model_load picks llama for the real HF checkpoint ../shared/models/tiny-random-llama
 *     (model_type "llama"); cached decoding through peft_model_decode gives the float64 logits
 *     and the 8 greedy ids its SOURCE.txt records, and a full peft_model_forward over prompt +
 *     continuation predicts each next id (the same oracle as test_llama_tiny, through the ops);
 *   - info, sites and norms (with their layers) as config.json says;
 *   - an unknown model_type is refused naming config.json, the field and the known types; a
 *     seq-cls load of llama is refused; a missing op is refused naming the architecture. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "unit/tiny_random_llama.h"
#include "fileio.h"
#include "models/model.h"

static const int32_t *const expected = tiny_random_llama_greedy;

static void check_refusals(void) {
    CHECK(peft_task_parse("seq-cls") == PEFT_TASK_SEQ_CLS && peft_task_parse("image-cls") == PEFT_TASK_IMAGE_CLS);
    CHECK(peft_task_parse("causal-lm") == PEFT_TASK_CAUSAL_LM && peft_task_parse("lm") == -1 && peft_task_parse(NULL) == -1);
    CHECK(!strcmp(peft_task_name(PEFT_TASK_IMAGE_CLS), "image-cls"));
    CHECK(peft_arch_find("mistral") == peft_arch_find("qwen2") && peft_arch_find("llama") && !peft_arch_find("gpt_neox"));
    CHECK(peft_n_archs() >= 1 && !strcmp(peft_arch_at(0)->name, "llama") && !peft_arch_at(peft_n_archs()));

    char root[] = "/tmp/peft_model_iface_XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", root);
    const char *cfg = "{\"architectures\":[\"GPTNeoXForCausalLM\"],\"model_type\":\"gpt_neox\",\"hidden_size\":8}";
    peft_err err = {0};
    CHECK(peft_write_file_atomic(path, cfg, strlen(cfg), &err) == 0);
    peft_model *m = NULL;
    int rc = peft_model_load(root, NULL, &m, &err);
    CHECK_MSG(rc == PEFT_EUNSUPPORTED && m == NULL && strstr(err.msg, "config.json") && strstr(err.msg, "model_type") &&
                  strstr(err.msg, "gpt_neox") && strstr(err.msg, "llama, mistral, qwen2"),
              "rc %d: %s", rc, err.msg);
    unlink(path);
    rmdir(root);
}

int main(void) {
    check_refusals();
    const char *shared = getenv("PEFT_SHARED");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/tiny-random-llama", shared ? shared : "../shared");
    char cfg_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    if (!peft_file_exists(cfg_path)) CHECK_SKIP("%s not found (the shared fixtures are not beside the project)", cfg_path);

    peft_err err = {0};
    peft_model_load_opts cls = {.task = PEFT_TASK_SEQ_CLS};
    peft_model *m = NULL;
    CHECK_MSG(peft_model_load(dir, &cls, &m, &err) == PEFT_EUNSUPPORTED && !m && strstr(err.msg, "causal-lm"), "%s", err.msg);
    int rc = peft_model_load(dir, NULL, &m, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return check_report("test_model_iface");

    const peft_model_info *in = &m->info;
    CHECK(!strcmp(in->arch, "llama") && !strcmp(in->model_type, "llama") && !strcmp(in->hf_class, "LlamaForCausalLM"));
    CHECK(in->task == PEFT_TASK_CAUSAL_LM && in->is_decoder && peft_model_n_outputs(m) == in->vocab_size);
    CHECK(m->n_params == 1032272 && !strcmp(m->compute, "f32") && m->tok_embed && m->weights);
    CHECK(m->n_sites == 7 * in->n_layers && m->n_norms == 2 * in->n_layers + 1);
    CHECK(peft_model_find_site(m, "model.layers.1.mlp.down_proj") == m->sites[13] && !peft_model_find_site(m, "lm_head"));
    peft_norm_site *fn = peft_model_find_norm(m, "model.norm");
    CHECK(fn == m->norms[m->n_norms - 1] && fn->layer == -1 && fn->dim == in->hidden_size && !fn->bias);
    CHECK(m->norms[3]->layer == 1 && !strcmp(m->norms[3]->name, "model.layers.1.post_attention_layernorm"));
    int64_t shape[PEFT_MODEL_MAX_DIMS];
    int ndim = 0;
    CHECK(peft_model_tensor(m, "model.embed_tokens.weight", shape, &ndim) == m->tok_embed && ndim == 2 &&
          shape[0] == in->vocab_size && shape[1] == in->hidden_size);

    int V = in->vocab_size;
    float *logits = malloc((size_t)V * sizeof *logits);
    peft_kv *kv = NULL;
    CHECK(peft_model_kv_alloc(m, 16, 4, &kv, &err) == 0);
    int32_t seq[11] = {1, 2, 3};
    CHECK(peft_model_decode(m, kv, seq, 3, logits, &err) == 0 && peft_model_kv_len(m, kv) == 3);
    CHECK_CLOSE(logits[18568], 0.298970, 1e-5); /* float64 reference from SOURCE.txt */
    CHECK_CLOSE(logits[8575], 0.279835, 1e-5);
    CHECK_CLOSE(logits[3], -0.098116, 1e-5);
    for (int s = 0; s < 8; s++) {
        seq[3 + s] = argmax(logits, V);
        CHECK_MSG(seq[3 + s] == expected[s], "step %d: %d vs %d", s, seq[3 + s], expected[s]);
        if (s < 7) CHECK(peft_model_decode(m, kv, &seq[3 + s], 1, logits, &err) == 0);
    }
    peft_model_kv_free(m, kv);

    peft_acts *a = NULL;
    CHECK(peft_model_acts_alloc(m, 1, 10, 0, 0, &a, &err) == 0);
    peft_batch b = {.B = 1, .T = 10, .ids = seq};
    CHECK_MSG(peft_model_forward(m, a, &b, NULL, NULL, &err) == 0, "%s", err.msg);
    const float *out = peft_model_outputs(m, a);
    for (int t = 2; t < 10 && out; t++) CHECK_MSG(argmax(out + (size_t)t * V, V) == seq[t + 1], "position %d", t);
    peft_batch wrong = {.B = 2, .T = 10, .ids = seq};
    CHECK(peft_model_forward(m, a, &wrong, NULL, NULL, &err) == PEFT_EINVAL);
    peft_model_acts_free(m, a);

    /* an architecture without KV decoding: the wrapper refuses, naming it */
    peft_model_ops no_decode = *m->ops;
    no_decode.kv_alloc = NULL;
    const peft_model_ops *ops = m->ops;
    m->ops = &no_decode;
    CHECK_MSG(peft_model_kv_alloc(m, 16, 4, &kv, &err) == PEFT_EUNSUPPORTED && !kv && strstr(err.msg, "llama") &&
                  strstr(err.msg, "KV-cache decoding"),
              "%s", err.msg);
    m->ops = ops;
    free(logits);
    peft_model_free(m);
    return check_report("test_model_iface");
}
