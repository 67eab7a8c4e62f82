/* test_adapter_io.c: HF PEFT adapter files.
 *  - The real PEFT LoRA adapter ../shared/models/lora-llama-3.2-1b-qv-r8 (written by HF PEFT)
 *    loads against Llama-3.2-1B's config.json (tests/data; the base weights are not needed):
 *    64 tensors on q_proj/v_proj of 16 layers, v_proj's B is [512, 8] by GQA.
 *  - Against a config whose shapes disagree it is refused with a message naming the tensor.
 *  - peft.c's own save -> load round trip reproduces parameters bit for bit, and the saved
 *    adapter_config.json has PEFT's field names and values.
 *  - Hostile adapter files are refused on load, naming the file and what is wrong: NaN / Inf
 *    tensors, a non-finite or absurd lora_alpha (1e999 reads as Inf), dropout outside [0, 1),
 *    fractional or negative layers_to_transform. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/llama.h"
#include "check.h"
#include "fileio.h"
#include "io/json.h"
#include "methods/adapter_set.h"

static const char *env_or(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v ? v : dflt;
}

static void real_peft_adapter(const char *shared, const char *src) {
    char adapter[4096], cfg[4096];
    snprintf(adapter, sizeof adapter, "%s/models/lora-llama-3.2-1b-qv-r8", shared);
    snprintf(cfg, sizeof cfg, "%s/tests/data/llama-3.2-1b-config.json", src);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load_shapes(cfg, &m, &err) == 0, "%s", err.msg);
    peft_adapter_set *set;
    int rc = peft_adapter_set_load(adapter, &m->base, 0, &set, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    CHECK(peft_adapter_set_n_sites(set) == 32);
    CHECK(peft_adapter_set_n_params(set) == 64);
    CHECK(peft_adapter_set_numel(set) == 16u * (8 * 2048 + 2048 * 8 + 8 * 2048 + 512 * 8));
    const peft_adapter_config *c = peft_adapter_set_config(set);
    CHECK(c->opts.rank == 8 && c->opts.alpha == 16 && !c->opts.use_rslora);
    CHECK(!strcmp(c->base_model, "meta-llama/Llama-3.2-1B"));
    peft_named_param *p = peft_adapter_set_params(set);
    int found_vb = 0;
    for (int i = 0; i < peft_adapter_set_n_params(set); i++)
        if (!strcmp(p[i].key, "base_model.model.model.layers.15.self_attn.v_proj.lora_B.weight")) {
            found_vb = 1;
            CHECK(p[i].p.shape[0] == 512 && p[i].p.shape[1] == 8);
            double norm = 0;
            for (size_t j = 0; j < p[i].p.numel; j++) norm += p[i].p.data[j] * p[i].p.data[j];
            CHECK(norm > 0); /* trained B is not the zero init: the values were read */
        }
    CHECK(found_vb);
    peft_adapter_set_free(set);
    llama_free(m);

    /* The same adapter against a model without GQA: v_proj B must be [2048, 8]. */
    char *text;
    size_t len;
    CHECK(peft_read_file(cfg, &text, &len, &err) == 0);
    char *kv = strstr(text, "\"num_key_value_heads\": 8");
    CHECK(kv != NULL);
    if (kv) memcpy(kv, "\"num_key_value_heads\":32", 24);
    char tmp[] = "/tmp/peft_adapter_cfg_XXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0 && write(fd, text, len) == (ssize_t)len);
    close(fd);
    free(text);
    CHECK_MSG(llama_load_shapes(tmp, &m, &err) == 0, "%s", err.msg);
    rc = peft_adapter_set_load(adapter, &m->base, 0, &set, &err);
    CHECK(rc == PEFT_ESHAPE);
    CHECK_MSG(strstr(err.msg, "v_proj.lora_B.weight") && strstr(err.msg, "adapter_model.safetensors"), "%s", err.msg);
    llama_free(m);
    unlink(tmp);
}

static void round_trip(const char *src) {
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/tests/data/llama-3.2-1b-config.json", src);
    peft_err err = {0};
    peft_llama *m;
    CHECK(llama_load_shapes(cfg, &m, &err) == 0);
    peft_adapter_config ac;
    peft_adapter_config_default(&ac);
    strcpy(ac.target_modules, "q_proj,down_proj");
    ac.opts.rank = 4;
    ac.opts.alpha = 8;
    ac.opts.use_rslora = 1;
    ac.n_layers_to_transform = 2;
    ac.layers_to_transform[0] = 0;
    ac.layers_to_transform[1] = 3;
    strcpy(ac.rank_pattern[0].key, "down_proj");
    ac.rank_pattern[0].value = 2;
    ac.n_rank_pattern = 1;
    strcpy(ac.base_model, "meta-llama/Llama-3.2-1B");
    peft_adapter_set *set;
    CHECK_MSG(peft_adapter_set_create(&m->base, &ac, 0, &set, &err) == 0, "%s", err.msg);
    CHECK(peft_adapter_set_n_sites(set) == 4);
    peft_named_param *p = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set); i++) {
        for (size_t j = 0; j < p[i].p.numel; j++) p[i].p.data[j] = (float)((i * 31 + j) % 97) / 97.0f - 0.5f;
        if (strstr(p[i].key, "down_proj.lora_A")) CHECK(p[i].p.shape[0] == 2); /* rank_pattern applied */
    }
    char dir[] = "/tmp/peft_adapter_rt_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_MSG(peft_adapter_set_save(set, dir, &err) == 0, "%s", err.msg);
    peft_adapter_set_free(set);
    peft_adapter_set *back;
    CHECK_MSG(peft_adapter_set_load(dir, &m->base, 0, &back, &err) == 0, "%s", err.msg);
    p = peft_adapter_set_params(back);
    int same = peft_adapter_set_n_params(back) == 8;
    for (int i = 0; same && i < 8; i++)
        for (size_t j = 0; j < p[i].p.numel; j++) same &= p[i].p.data[j] == (float)((i * 31 + j) % 97) / 97.0f - 0.5f;
    CHECK(same);
    peft_adapter_set_free(back);

    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *root;
    CHECK(peft_json_load(path, &root, &err) == 0);
    const char *s;
    long long r;
    double alpha;
    int rs;
    CHECK(peft_json_string(root, "peft_type", 1, &s, path, &err) == 0 && !strcmp(s, "LORA"));
    CHECK(peft_json_string(root, "task_type", 1, &s, path, &err) == 0 && !strcmp(s, "CAUSAL_LM"));
    CHECK(peft_json_int(root, "r", 1, &r, path, &err) == 0 && r == 4);
    CHECK(peft_json_double(root, "lora_alpha", 1, &alpha, path, &err) == 0 && alpha == 8);
    CHECK(peft_json_bool(root, "use_rslora", 1, &rs, path, &err) == 0 && rs == 1);
    const cJSON *tm = cJSON_GetObjectItem(root, "target_modules");
    CHECK(cJSON_IsArray(tm) && cJSON_GetArraySize(tm) == 2);
    CHECK(cJSON_IsNumber(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "rank_pattern"), "down_proj")));
    cJSON_Delete(root);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    llama_free(m);
}

/* Loads dir after setting field `key` of its adapter_config.json to the raw JSON `raw`;
 * the config is restored afterwards. */
static int load_with_field(const char *dir, peft_llama *m, const char *key, const char *raw, peft_err *err) {
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK(peft_read_file(path, &text, &len, err) == 0);
    cJSON *root = cJSON_Parse(text);
    cJSON_ReplaceItemInObject(root, key, cJSON_CreateRaw(raw));
    char *changed = cJSON_Print(root);
    CHECK(peft_write_file_atomic(path, changed, strlen(changed), err) == 0);
    peft_adapter_set *set = NULL;
    int rc = peft_adapter_set_load(dir, &m->base, 0, &set, err);
    peft_adapter_set_free(set);
    peft_err ignored;
    CHECK(peft_write_file_atomic(path, text, len, &ignored) == 0);
    free(changed);
    free(text);
    cJSON_Delete(root);
    return rc;
}

static void hostile_adapters(const char *src) {
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/tests/data/llama-3.2-1b-config.json", src);
    peft_err err = {0};
    peft_llama *m;
    CHECK(llama_load_shapes(cfg, &m, &err) == 0);
    peft_adapter_config ac;
    peft_adapter_config_default(&ac);
    ac.n_layers_to_transform = 1; /* layer 1's q_proj, v_proj */
    ac.layers_to_transform[0] = 1;
    char dir[] = "/tmp/peft_adapter_bad_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    static const float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 3; k++) { /* NaN, Inf, then a clean adapter for the config cases */
        peft_adapter_set *set, *back = NULL;
        CHECK_MSG(peft_adapter_set_create(&m->base, &ac, 0, &set, &err) == 0, "%s", err.msg);
        peft_named_param *p = peft_adapter_set_params(set);
        char key[256];
        snprintf(key, sizeof key, "%s", p[1].p.numel ? p[1].key : "");
        if (k < 2) p[1].p.data[p[1].p.numel - 1] = bad[k]; /* the last element of a B */
        CHECK_MSG(peft_adapter_set_save(set, dir, &err) == 0, "%s", err.msg);
        peft_adapter_set_free(set);
        if (k == 2) break;
        int rc = peft_adapter_set_load(dir, &m->base, 0, &back, &err);
        CHECK_MSG(rc == PEFT_ENUMERIC && back == NULL && strstr(err.msg, key) && strstr(err.msg, "non-finite") &&
                      strstr(err.msg, "adapter_model.safetensors"), "rc %d: %s", rc, err.msg);
        peft_adapter_set_free(back);
    }
    peft_adapter_set *ok = NULL;
    CHECK_MSG(peft_adapter_set_load(dir, &m->base, 0, &ok, &err) == 0, "the clean adapter must load: %s", err.msg);
    peft_adapter_set_free(ok);
    static const struct { const char *key, *raw, *want; } cases[] = {
        {"lora_alpha", "1e999", "alpha"},
        {"lora_alpha", "-1e999", "alpha"},
        {"lora_alpha", "1e200", "alpha"},
        {"lora_dropout", "1.5", "dropout"},
        {"lora_dropout", "-0.1", "dropout"},
        {"layers_to_transform", "[1.5]", "layers_to_transform"},
        {"layers_to_transform", "-1", "layers_to_transform"},
        {"layers_to_transform", "[1e300]", "layers_to_transform"},
        {"r", "-8", "r = -8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = load_with_field(dir, m, cases[i].key, cases[i].raw, &err);
        CHECK_MSG(rc == PEFT_EFORMAT && strstr(err.msg, cases[i].want) && strstr(err.msg, "adapter_config.json"), "%s %s: rc %d %s",
                  cases[i].key, cases[i].raw, rc, err.msg);
    }
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    llama_free(m);
}

int main(void) {
    const char *src = env_or("PEFT_SRC", ".."), *shared = env_or("PEFT_SHARED", "../../shared");
    round_trip(src);
    hostile_adapters(src);
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/models/lora-llama-3.2-1b-qv-r8/adapter_config.json", shared);
    if (peft_file_exists(probe)) real_peft_adapter(shared, src);
    else CHECK_SKIP_PART("%s not found", probe);
    return check_report("test_adapter_io");
}
