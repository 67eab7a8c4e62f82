/* driver_vit.c: the C side of tests/models/test_vit_parity.py.
 *
 * DIR holds model/ (a ViT checkpoint with preprocessor_config.json) and images.txt, one
 * "LABEL PATH" line per image (LABEL -1: no loss). Every image is decoded and preprocessed by
 * peft.c (io/image.h, io/image_preprocess.h) into the batch's pixels.
 *
 *   driver_vit run DIR [RANK ALPHA]
 *     With RANK: a LoRA adapter set at every query and value site (q_proj, v_proj; r RANK, alpha ALPHA), its
 *     A and B read from DIR/lora.safetensors under PEFT's keys. A training forward and backward
 *     through the peft_model interface; DIR/out.safetensors gets "pixels" [B, 3, S, S],
 *     "logits" [B, NL], "features" [B, C] (CLS after vit.layernorm), "loss" [1], every LoRA
 *     gradient under its PEFT key, every head gradient under "grad.<head name>" and, every norm
 *     being hooked for gradients (LayerNorm tuning), "grad.<norm name>.weight" / ".bias".
 *     PEFT_DRIVER_RECOMPUTE=1: recompute each layer in backward.
 *
 *   driver_vit train DIR OUT STEPS LR
 *     A fresh LoRA set (q_proj,v_proj, r 4, alpha 8) and the classifier (the set trains the
 *     model's head) trained STEPS AdamW steps on the labels, saved to OUT in PEFT's format;
 *     DIR/out.safetensors gets the trained model's "logits".
 *
 *   driver_vit load MODEL TASK [N_LABELS [OUT]]
 *     MODEL loaded for TASK (N_LABELS 0: config.json's): one line of what was loaded, or the
 *     error on stderr and exit 1; with OUT, written back there by peft_model_save_hf. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/image_preprocess.h"
#include "io/safetensors.h"
#include "methods/adapter.h"
#include "methods/adapter_set.h"
#include "models/vit.h"
#include "train/optim.h"

#define MAX_IMAGES 64

typedef struct job {
    peft_model *m;
    peft_batch b;
    float *pixels;                 /* [B, 3, S, S] */
    int32_t labels[MAX_IMAGES];
    peft_adapter_set *set;
    peft_acts *a;
} job;

static void job_free(job *j) {
    if (j->a) peft_model_acts_free(j->m, j->a);
    peft_adapter_set_free(j->set);
    peft_model_free(j->m);
    free(j->pixels);
}

/* DIR/model for image-cls and the images of DIR/images.txt preprocessed as its preprocessor_config.json says. */
static int job_open(job *j, const char *dir, peft_err *err) {
    char path[4200], img_path[4096];
    *j = (job){0};
    snprintf(path, sizeof path, "%s/model", dir);
    const peft_model_load_opts lo = {.task = PEFT_TASK_IMAGE_CLS};
    int rc = peft_model_load(path, &lo, &j->m, err);
    peft_image_processor proc;
    snprintf(path, sizeof path, "%s/model/preprocessor_config.json", dir);
    if (rc == PEFT_OK) rc = peft_image_processor_load(path, &proc, err);
    snprintf(path, sizeof path, "%s/images.txt", dir);
    FILE *f = rc == PEFT_OK ? fopen(path, "r") : NULL;
    if (rc == PEFT_OK && !f) rc = peft_fail(err, PEFT_EIO, "%s: cannot open", path);
    const int S = j->m ? j->m->info.image_size : 0, CIN = j->m ? j->m->info.n_channels : 0;
    const size_t per = (size_t)CIN * S * S;
    int n = 0, label;
    if (rc == PEFT_OK && !(j->pixels = malloc(MAX_IMAGES * per * sizeof(float)))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    while (rc == PEFT_OK && n < MAX_IMAGES && fscanf(f, "%d %4095s", &label, img_path) == 2) {
        peft_image img;
        float *pv = NULL;
        int h = 0, w = 0;
        rc = peft_image_load(img_path, &img, err);
        if (rc == PEFT_OK) {
            rc = peft_image_preprocess(&proc, &img, img_path, &pv, &h, &w, err);
            peft_image_free(&img);
        }
        if (rc == PEFT_OK && (h != S || w != S || CIN != 3)) /* no position interpolation */
            rc = peft_fail(err, PEFT_EINVAL, "%s: preprocessed to 3 x %d x %d, the model takes %d x %d x %d", img_path, h, w, CIN, S, S);
        if (rc == PEFT_OK) memcpy(j->pixels + (size_t)n * per, pv, per * sizeof(float));
        free(pv);
        j->labels[n++] = label;
    }
    if (f) fclose(f);
    if (rc == PEFT_OK && n == 0) rc = peft_fail(err, PEFT_EFORMAT, "%s: no images", path);
    j->b = (peft_batch){.B = n, .T = j->m ? j->m->info.max_positions : 0, .pixels = j->pixels, .targets = j->labels};
    return rc;
}

/* LoRA (q_proj,v_proj: query and value) on the job's model for its batch. */
static int job_lora(job *j, int rank, double alpha, peft_err *err) {
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    snprintf(cfg.target_modules, sizeof cfg.target_modules, "q_proj,v_proj");
    cfg.opts.rank = rank;
    cfg.opts.alpha = alpha;
    cfg.opts.seed = 3;
    const int N = j->b.B * j->b.T;
    int rc = peft_adapter_set_create(j->m, &cfg, N, &j->set, err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(j->set, N, err);
    return rc;
}

static int write_outs(const char *dir, const peft_st_entry *e, int n, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    return peft_st_write(path, e, n, NULL, 0, err);
}

#define MAX_OUT 256
static int run(const char *dir, int rank, double alpha) {
    peft_err err = {0};
    job j;
    int rc = job_open(&j, dir, &err);
    peft_st_file *lf = NULL;
    char path[4200];
    if (rc == PEFT_OK && rank) rc = job_lora(&j, rank, alpha, &err);
    /* the set's params: the LoRA tensors, then the model's head (m->head, whose gradients it owns) */
    const int np = j.set ? peft_adapter_set_n_params(j.set) - j.m->n_head : 0;
    peft_named_param *ps = j.set ? peft_adapter_set_params(j.set) : NULL;
    snprintf(path, sizeof path, "%s/lora.safetensors", dir);
    if (rc == PEFT_OK && rank) rc = peft_st_open(path, &lf, &err);
    for (int i = 0; rc == PEFT_OK && i < np; i++) {
        const peft_st_tensor *t = peft_st_find(lf, ps[i].key);
        if (!t || t->dtype != PEFT_F32 || t->numel != ps[i].p.numel) rc = peft_fail(&err, PEFT_EFORMAT, "%s: needs F32 %s", path, ps[i].key);
        else memcpy(ps[i].p.data, t->data, t->numel * sizeof(float));
    }
    if (j.set) peft_adapter_set_mode(j.set, 1, 0);
    const int nn = j.m ? j.m->n_norms : 0;
    float *ngrads = rc == PEFT_OK ? calloc((size_t)nn * 2 * j.m->info.hidden_size, sizeof(float)) : NULL;
    if (rc == PEFT_OK && !ngrads) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; rc == PEFT_OK && i < nn; i++) {
        peft_norm_site *ns = j.m->norms[i];
        ns->grad = ngrads + (size_t)2 * i * ns->dim;
        ns->bias_grad = ns->grad + ns->dim;
    }
    double loss = 0.0;
    int n_counted = 0;
    const char *rec = getenv("PEFT_DRIVER_RECOMPUTE");
    if (rc == PEFT_OK) rc = peft_model_acts_alloc(j.m, j.b.B, j.b.T, !(rec && !strcmp(rec, "1")), 1, &j.a, &err);
    if (rc == PEFT_OK) rc = peft_model_forward(j.m, j.a, &j.b, &loss, &n_counted, &err);
    if (rc == PEFT_OK) rc = peft_model_backward(j.m, j.a, &j.b, n_counted);
    if (rc == PEFT_OK) {
        static peft_st_entry e[MAX_OUT];
        static char names[MAX_OUT][160];
        const int B = j.b.B, S = j.m->info.image_size, NL = j.m->info.n_labels;
        float lossf = (float)loss;
        int n = 0;
        e[n++] = (peft_st_entry){.name = "pixels", .dtype = PEFT_F32, .ndim = 4, .shape = {B, 3, S, S}, .data = j.pixels};
        e[n++] = (peft_st_entry){.name = "logits", .dtype = PEFT_F32, .ndim = 2, .shape = {B, NL}, .data = peft_model_outputs(j.m, j.a)};
        e[n++] = (peft_st_entry){.name = "features", .dtype = PEFT_F32, .ndim = 2, .shape = {B, j.m->info.hidden_size},
                                 .data = vit_cls_features(j.a)};
        e[n++] = (peft_st_entry){.name = "loss", .dtype = PEFT_F32, .ndim = 1, .shape = {1}, .data = &lossf};
        for (int i = 0; i < np && n < MAX_OUT; i++)
            e[n++] = (peft_st_entry){.name = ps[i].key, .dtype = PEFT_F32, .ndim = ps[i].p.ndim,
                                     .shape = {ps[i].p.shape[0], ps[i].p.shape[1]}, .data = ps[i].p.grad};
        for (int h = 0; h < j.m->n_head && j.m->head[h].grad && n < MAX_OUT; h++, n++) {
            const peft_param *hp = &j.m->head[h];
            snprintf(names[n], sizeof names[n], "grad.%s", hp->name);
            e[n] = (peft_st_entry){.name = names[n], .dtype = PEFT_F32, .ndim = hp->ndim, .shape = {hp->shape[0], hp->shape[1]},
                                   .data = hp->grad};
        }
        for (int i = 0; i < nn && n + 1 < MAX_OUT; i++) {
            const peft_norm_site *ns = j.m->norms[i];
            for (int w = 0; w < 2; w++, n++) {
                snprintf(names[n], sizeof names[n], "grad.%s.%s", ns->name, w ? "bias" : "weight");
                e[n] = (peft_st_entry){.name = names[n], .dtype = PEFT_F32, .ndim = 1, .shape = {ns->dim}, .data = w ? ns->bias_grad : ns->grad};
            }
        }
        rc = write_outs(dir, e, n, &err);
        printf("run: B %d loss %.6f counted %d, %d adapter tensors, %d outputs\n", B, loss, n_counted, np, n);
    }
    if (rc) fprintf(stderr, "driver_vit run: %s\n", err.msg[0] ? err.msg : "failed");
    peft_st_close(lf);
    job_free(&j);
    free(ngrads);
    return rc ? 1 : 0;
}

/* A fresh LoRA set and the classifier trained STEPS AdamW steps, saved to OUT; then the logits. */
static int train(const char *dir, const char *out_dir, int steps, double lr) {
    peft_err err = {0};
    job j;
    peft_adamw opt = {0};
    int rc = job_open(&j, dir, &err);
    if (rc == PEFT_OK) rc = job_lora(&j, 4, 8, &err);
    if (rc == PEFT_OK) rc = peft_model_acts_alloc(j.m, j.b.B, j.b.T, 1, 1, &j.a, &err);
    if (rc == PEFT_OK)
        rc = peft_adamw_init(&opt, peft_adapter_set_params(j.set), peft_adapter_set_n_params(j.set), 0.9, 0.999, 1e-8, 0.0, &err);
    double loss = 0.0;
    int n_counted = 0;
    for (int s = 0; rc == PEFT_OK && s < steps; s++) {
        peft_adapter_set_mode(j.set, 1, (uint64_t)s);
        peft_adapter_set_zero_grad(j.set);
        rc = peft_model_forward(j.m, j.a, &j.b, &loss, &n_counted, &err);
        if (rc == PEFT_OK) rc = peft_model_backward(j.m, j.a, &j.b, n_counted);
        if (rc == PEFT_OK) peft_adamw_step(&opt, lr);
        printf("train: step %d loss %.6f\n", s, loss);
    }
    if (rc == PEFT_OK) rc = peft_adapter_set_save(j.set, out_dir, &err);
    peft_batch eval = j.b;
    eval.targets = NULL;
    if (rc == PEFT_OK) {
        peft_adapter_set_mode(j.set, 0, 0);
        rc = peft_model_forward(j.m, j.a, &eval, NULL, NULL, &err);
    }
    if (rc == PEFT_OK) {
        const peft_st_entry e = {.name = "logits", .dtype = PEFT_F32, .ndim = 2, .shape = {j.b.B, j.m->info.n_labels},
                                 .data = peft_model_outputs(j.m, j.a)};
        rc = write_outs(dir, &e, 1, &err);
    }
    if (rc) fprintf(stderr, "driver_vit train: %s\n", err.msg[0] ? err.msg : "failed");
    peft_adamw_free(&opt);
    job_free(&j);
    return rc ? 1 : 0;
}

/* MODEL loaded for TASK with N_LABELS (0: config.json's); OUT: written back with save_hf. */
static int load(const char *model, const char *task, int n_labels, const char *out) {
    peft_err err = {0};
    peft_model *m = NULL;
    const peft_model_load_opts lo = {.task = (peft_task)peft_task_parse(task), .n_labels = n_labels};
    int rc = peft_model_load(model, &lo, &m, &err);
    if (rc == PEFT_OK)
        printf("load: %s %s %s labels %d sites %d norms %d head %d params %zu\n", m->info.arch, m->info.hf_class,
               peft_task_name(m->info.task), m->info.n_labels, m->n_sites, m->n_norms, m->n_head, m->n_params);
    if (rc == PEFT_OK && out) rc = peft_model_save_hf(m, out, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    peft_model_free(m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "run")) return run(argv[2], 0, 0);
    if (argc == 5 && !strcmp(argv[1], "run")) return run(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "train")) return train(argv[2], argv[3], atoi(argv[4]), atof(argv[5]));
    if (argc >= 4 && argc <= 6 && !strcmp(argv[1], "load"))
        return load(argv[2], argv[3], argc >= 5 ? atoi(argv[4]) : 0, argc == 6 ? argv[5] : NULL);
    fprintf(stderr, "usage: driver_vit run DIR [RANK ALPHA] | train DIR OUT STEPS LR | load MODEL TASK [N_LABELS [OUT]]\n");
    return 2;
}
