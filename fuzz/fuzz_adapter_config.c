/* fuzz_adapter_config.c: libFuzzer target for adapter_config.json parsing
 * (peft_adapter_config_parse), followed by what peft_adapter_set_load does next with an
 * accepted config: attaching the adapters to a model (a tiny random Llama written once to a
 * temporary directory), which applies target_modules / rank_pattern / alpha_pattern.
 * Any input must give an error naming the input, or a config of a known method whose
 * attachment either fails cleanly or succeeds. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "methods/adapter_set.h"
#include "tiny_model.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

static peft_llama *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char dir[] = "/tmp/peft-fuzz-model-XXXXXX";
    peft_err err;
    REQUIRE(mkdtemp(dir) && tiny_model_write(dir, PEFT_F32, 1) == 0 && llama_load(dir, &model, &err) == 0);
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 16)) return 0;
    char *text = malloc(size ? size : 1); /* not NUL-terminated: the parser must honour len */
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    peft_err err = {0};
    peft_adapter_config cfg;
    int rc = peft_adapter_config_parse(text, size, "fuzz.json", &cfg, &err);
    free(text);
    if (rc != PEFT_OK) {
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz.json"));
        return 0;
    }
    REQUIRE(peft_method_find(cfg.method) != NULL);
    REQUIRE(memchr(cfg.target_modules, 0, sizeof cfg.target_modules) && memchr(cfg.base_model, 0, sizeof cfg.base_model));
    REQUIRE(cfg.n_layers_to_transform >= 0 && cfg.n_layers_to_transform <= 64);
    REQUIRE(cfg.n_rank_pattern >= 0 && cfg.n_rank_pattern <= PEFT_MAX_PATTERNS);
    REQUIRE(cfg.n_alpha_pattern >= 0 && cfg.n_alpha_pattern <= PEFT_MAX_PATTERNS);
    for (int i = 0; i < cfg.n_rank_pattern; i++) REQUIRE(memchr(cfg.rank_pattern[i].key, 0, sizeof cfg.rank_pattern[i].key));
    REQUIRE(memchr(cfg.opts.feedforward_modules, 0, sizeof cfg.opts.feedforward_modules));
    peft_adapter_set *set = NULL;
    rc = peft_adapter_set_create(model, &cfg, 4, &set, &err);
    if (rc != PEFT_OK) {
        REQUIRE(rc < 0 && set == NULL && err.code == rc && memchr(err.msg, 0, sizeof err.msg));
    } else {
        REQUIRE(set != NULL);
        for (int i = 0; i < peft_adapter_set_n_params(set); i++) {
            const peft_param *p = &peft_adapter_set_params(set)[i].p;
            REQUIRE(p->numel > 0 && p->data);
            volatile float sink = p->data[p->numel - 1];
            (void)sink;
        }
        peft_adapter_set_free(set);
    }
    return 0;
}
