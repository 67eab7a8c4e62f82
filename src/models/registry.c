/* registry.c: the architectures peft.c runs, and peft_model_load, which picks one by
 * config.json's model_type. Adding an architecture: one extern and one line in `archs`. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/gguf.h"
#include "io/json.h"

extern const peft_arch peft_arch_llama;
extern const peft_arch peft_arch_bert; /* bert, roberta */
extern const peft_arch peft_arch_vit;

static const peft_arch *const archs[] = {
    &peft_arch_llama,
    &peft_arch_bert,
    &peft_arch_vit,
};

int peft_n_archs(void) { return (int)(sizeof archs / sizeof archs[0]); }

const peft_arch *peft_arch_at(int i) { return i >= 0 && i < peft_n_archs() ? archs[i] : NULL; }

const peft_arch *peft_arch_find(const char *model_type) {
    for (int i = 0; model_type && i < peft_n_archs(); i++)
        for (const char *const *t = archs[i]->model_types; *t; t++)
            if (!strcmp(*t, model_type)) return archs[i];
    return NULL;
}

/* "llama, mistral, qwen2, gpt2" for messages. */
static void known_types(char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < peft_n_archs(); i++)
        for (const char *const *t = archs[i]->model_types; *t && n < cap; t++)
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", *t);
}

int peft_model_load(const char *path, const peft_model_load_opts *opts, peft_model **out, peft_err *err) {
    static const peft_model_load_opts defaults = {.task = PEFT_TASK_CAUSAL_LM};
    const peft_model_load_opts *o = opts ? opts : &defaults;
    *out = NULL;
    if (peft_gguf_is_file(path)) return peft_arch_llama.load(path, NULL, 0, o, out, err); /* GGUFs: the llama family */
    char config[4200], *text = NULL;
    size_t len = 0;
    snprintf(config, sizeof config, "%s/config.json", path);
    int rc = peft_read_file(config, &text, &len, err);
    cJSON *root = NULL;
    /* without model_type (hand-written configs): the llama family, which reads "architectures" */
    const char *model_type = "llama";
    if (rc == PEFT_OK) rc = peft_json_parse(text, len, config, &root, err);
    if (rc == PEFT_OK) rc = peft_json_string(root, "model_type", 0, &model_type, config, err);
    const peft_arch *arch = rc == PEFT_OK ? peft_arch_find(model_type) : NULL;
    if (rc == PEFT_OK && !arch) {
        char known[512];
        known_types(known, sizeof known);
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: model_type \"%s\" is not an architecture peft.c runs (known: %s)", config,
                       model_type, known);
    }
    cJSON_Delete(root);
    if (rc == PEFT_OK) rc = arch->load(path, text, len, o, out, err);
    free(text);
    return rc;
}
