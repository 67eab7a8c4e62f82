/* cmd_merge.c: `peft merge`: fold an adapter into its base model (W + s*B*A) and write a
 * complete Hugging Face checkpoint in the base model's dtypes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "fileio.h"
#include "methods/adapter_set.h"

/* Files a model directory may carry besides the weights; copied as they are. */
static const char *const side_files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "tokenizer.model"};

/* Writes every tensor of the base checkpoint, with merged site weights in their stored dtype. */
static int write_merged(cli_model *cm, const char *path, peft_err *err) {
    const peft_weights *w = cm->model->weights;
    int total = 0;
    for (int f = 0; f < w->n_files; f++) total += w->files[f]->n_tensors;
    peft_st_entry *e = calloc((size_t)total, sizeof *e);
    void **owned = calloc((size_t)total, sizeof *owned);
    int n = 0, rc = PEFT_OK;
    if (!e || !owned) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int f = 0; rc == PEFT_OK && f < w->n_files; f++)
        for (int i = 0; rc == PEFT_OK && i < w->files[f]->n_tensors; i++) {
            const peft_st_tensor *t = &w->files[f]->tensors[i];
            peft_st_entry *x = &e[n];
            x->name = t->name;
            x->dtype = t->dtype;
            x->ndim = t->ndim;
            memcpy(x->shape, t->shape, sizeof t->shape);
            x->data = t->data;
            char site_name[160];
            size_t len = strlen(t->name);
            peft_site *s = NULL;
            if (len > 7 && len - 7 < sizeof site_name && !strcmp(t->name + len - 7, ".weight")) {
                memcpy(site_name, t->name, len - 7);
                site_name[len - 7] = '\0';
                s = llama_find_site(cm->model, site_name);
            }
            if (s && s->adapter && (const void *)s->weight != t->data) {
                /* The model widened this tensor to f32: narrow the merged values back. */
                owned[n] = malloc(t->nbytes);
                if (!owned[n]) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
                else peft_convert_from_f32(owned[n], s->weight, t->dtype, t->numel);
                x->data = owned[n];
            }
            n++;
        }
    static const char *const meta[] = {"format", "pt"};
    if (rc == PEFT_OK) rc = peft_st_write(path, e, n, meta, 1, err);
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(e);
    return rc;
}

int cmd_merge(int argc, char **argv) {
    cli_args a;
    args_init(&a, "merge", argc, argv);
    if (args_has(&a, "--help")) {
        printf("usage: peft merge --model DIR --adapter DIR --out DIR\n"
               "  Writes DIR_out/model.safetensors with every adapted weight replaced by W + scale * B A\n"
               "  (in the base model's dtype), and copies config and tokenizer files.\n");
        return 0;
    }
    const char *dir = args_str(&a, "--model", NULL), *adapter = args_str(&a, "--adapter", NULL), *out = args_str(&a, "--out", NULL);
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !adapter || !out) {
        fprintf(stderr, "peft merge: --model, --adapter and --out are required\n");
        return 2;
    }
    char real_in[4096], real_out[4096];
    if (realpath(dir, real_in) && realpath(out, real_out) && !strcmp(real_in, real_out)) {
        fprintf(stderr, "peft merge: --out must differ from --model (the base checkpoint is kept intact)\n");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_model_load(dir, adapter, &cm, &err)) return cli_report(err.msg);
    rc = peft_adapter_set_merge(cm.adapters, +1, &err);
    if (rc == PEFT_OK) rc = peft_mkdir(out, &err);
    char src[4200], dst[4200];
    if (rc == PEFT_OK) {
        snprintf(dst, sizeof dst, "%s/model.safetensors", out);
        rc = write_merged(&cm, dst, &err);
    }
    for (size_t i = 0; rc == PEFT_OK && i < sizeof side_files / sizeof side_files[0]; i++) {
        snprintf(src, sizeof src, "%s/%s", dir, side_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, side_files[i]);
        if (peft_file_exists(src)) rc = peft_copy_file(src, dst, &err);
    }
    if (rc == PEFT_OK)
        printf("merged %d adapted layers of %s into %s\n", peft_adapter_set_n_sites(cm.adapters), dir, out);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
