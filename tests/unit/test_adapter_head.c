/* test_adapter_head.c: a model's task head in the adapter set (PEFT's modules_to_save). The
 * llama family has no classification task yet, so the test gives the tiny model the head an
 * architecture would fill (m->head: "score.weight" [3, C] for seq-cls; "classifier.weight" and
 * ".bias" for image-cls) and checks that the set trains it (a parameter with a gradient the set
 * owns, zeroed with the rest), saves it under PEFT's key with task_type / modules_to_save, and
 * loads it back shape-checked. With an argument DIR it also leaves the two adapters in
 * DIR/seq_cls and DIR/image_cls for test_peft_head_format.py, which holds them against what
 * peft 0.21 writes itself. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "methods/adapter_set.h"
#include "models/llama.h"
#include "tiny_model.h"

#define LABELS 3

typedef struct fake_head {
    peft_param p[2];
    float w[LABELS * TINY_C], b[LABELS];
} fake_head;

/* Gives m the head a classification architecture would have, its values from `seed`. */
static void give_head(peft_llama *m, peft_task task, fake_head *h, int rows, float seed) {
    memset(h, 0, sizeof *h);
    for (int i = 0; i < rows * TINY_C; i++) h->w[i] = seed + 0.01f * (float)i;
    for (int i = 0; i < rows; i++) h->b[i] = -seed - (float)i;
    const int image = task == PEFT_TASK_IMAGE_CLS;
    h->p[0] = (peft_param){.data = h->w, .numel = (size_t)rows * TINY_C, .ndim = 2, .shape = {rows, TINY_C}, .lr_scale = 1};
    snprintf(h->p[0].name, sizeof h->p[0].name, "%s", image ? "classifier.weight" : "score.weight");
    h->p[1] = (peft_param){.data = h->b, .numel = (size_t)rows, .ndim = 1, .shape = {rows}, .lr_scale = 1};
    snprintf(h->p[1].name, sizeof h->p[1].name, "classifier.bias");
    m->base.info.task = task;
    m->base.info.n_labels = rows;
    m->base.head = h->p;
    m->base.n_head = image ? 2 : 1;
}

/* adapter_config.json's task_type (NULL for null) and modules_to_save joined by commas. */
static void read_config(const char *dir, char *task, char *modules) {
    char path[700];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *root = NULL;
    peft_err err = {0};
    CHECK_MSG(peft_json_load(path, &root, &err) == 0, "%s", err.msg);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "task_type"), *mts = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save"), *e;
    snprintf(task, 32, "%s", cJSON_IsString(t) ? t->valuestring : cJSON_IsNull(t) ? "null" : "?");
    modules[0] = '\0';
    if (cJSON_IsNull(mts)) strcpy(modules, "null");
    const cJSON *list = cJSON_IsArray(mts) ? mts : NULL;
    cJSON_ArrayForEach(e, list) {
        if (cJSON_IsString(e)) snprintf(modules + strlen(modules), 128 - strlen(modules), "%s%s", modules[0] ? "," : "", e->valuestring);
    }
    cJSON_Delete(root);
}

static void run(const char *base, const char *dir, peft_task task, const char *want_task, const char *want_modules) {
    peft_err err = {0};
    peft_llama *m, *m2;
    CHECK_MSG(llama_load(base, &m, &err) == 0, "%s", err.msg);
    fake_head h, h2;
    give_head(m, task, &h, LABELS, 0.5f);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    peft_adapter_set *set;
    CHECK_MSG(peft_adapter_set_create(&m->base, &cfg, 4, &set, &err) == 0, "%s", err.msg);
    int n = peft_adapter_set_n_params(set), nh = m->base.n_head;
    peft_named_param *p = peft_adapter_set_params(set);
    const char *head_key = task == PEFT_TASK_SEQ_CLS ? "base_model.model.score.weight" : "base_model.model.classifier.weight";
    CHECK(n == 2 * 2 * 2 + nh); /* lora_A, lora_B at q_proj, v_proj of 2 layers, then the head */
    CHECK_MSG(!strcmp(p[n - nh].key, head_key), "%s", p[n - nh].key);
    CHECK(p[n - nh].p.data == h.w && p[n - nh].p.grad && p[n - nh].p.grad == m->base.head[0].grad);
    size_t numel = 0;
    for (int i = 0; i < n; i++) numel += p[i].p.numel;
    CHECK(peft_adapter_set_numel(set) == numel && numel > (size_t)LABELS * TINY_C);
    for (size_t i = 0; i < p[n - 1].p.numel; i++) p[n - 1].p.grad[i] = 1.0f;
    peft_adapter_set_zero_grad(set);
    float gmax = 0;
    for (size_t i = 0; i < p[n - 1].p.numel; i++) gmax = fmaxf(gmax, fabsf(p[n - 1].p.grad[i]));
    CHECK(gmax == 0.0f);

    CHECK_MSG(peft_adapter_set_save(set, dir, &err) == 0, "%s", err.msg);
    peft_adapter_set_free(set);
    CHECK(m->base.head[0].grad == NULL); /* the gradients went with the set */
    char task_type[32], modules[128];
    read_config(dir, task_type, modules);
    CHECK_MSG(!strcmp(task_type, want_task), "task_type %s", task_type);
    CHECK_MSG(!strcmp(modules, want_modules), "modules_to_save %s", modules);

    /* loaded back into another model of the same shape: the head's values come from the file */
    CHECK_MSG(llama_load(base, &m2, &err) == 0, "%s", err.msg);
    give_head(m2, task, &h2, LABELS, 2.0f);
    CHECK_MSG(peft_adapter_set_load(dir, &m2->base, 0, &set, &err) == 0, "%s", err.msg);
    CHECK(!memcmp(h2.w, h.w, sizeof h.w) && (nh == 1 || !memcmp(h2.b, h.b, sizeof h.b)));
    peft_adapter_set_free(set);
    llama_free(m2);

    /* a head of another shape, and a model without a head, are refused naming the key */
    CHECK_MSG(llama_load(base, &m2, &err) == 0, "%s", err.msg);
    give_head(m2, task, &h2, LABELS - 1, 2.0f);
    CHECK_MSG(peft_adapter_set_load(dir, &m2->base, 0, &set, &err) == PEFT_ESHAPE && strstr(err.msg, head_key) &&
                  strstr(err.msg, "the model needs [2, 16]"),
              "%s", err.msg);
    m2->base.head = NULL, m2->base.n_head = 0, m2->base.info.task = PEFT_TASK_CAUSAL_LM;
    CHECK_MSG(peft_adapter_set_load(dir, &m2->base, 0, &set, &err) == PEFT_ESHAPE &&
                  strstr(err.msg, task == PEFT_TASK_SEQ_CLS ? "base_model.model.score." : "base_model.model.classifier.") &&
                  strstr(err.msg, "matches no adapter site"),
              "%s", err.msg);
    llama_free(m2);
    llama_free(m);
}

int main(int argc, char **argv) {
    char root[] = "/tmp/peft_head_XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    char base[600], seq[700], image[700], cmd[800];
    snprintf(base, sizeof base, "%s/base", root);
    CHECK(tiny_model_write(base, PEFT_F32, 7) == 0);
    const char *out = argc > 1 ? argv[1] : root;
    snprintf(seq, sizeof seq, "%s/seq_cls", out);
    snprintf(image, sizeof image, "%s/image_cls", out);
    run(base, seq, PEFT_TASK_SEQ_CLS, "SEQ_CLS", "classifier,score");
    run(base, image, PEFT_TASK_IMAGE_CLS, "null", "classifier");
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0);
    return check_report("test_adapter_head");
}
