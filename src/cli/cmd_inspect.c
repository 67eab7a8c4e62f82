/* cmd_inspect.c: `peft inspect --model DIR`: architecture, parameter count, dtypes, tensors. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "io/safetensors.h"
#include "models/model.h"

static void print_info(const peft_model_info *c) {
    printf("architecture      %s\n", c->hf_class);
    printf("layers            %d\n", c->n_layers);
    printf("hidden_size       %d\n", c->hidden_size);
    printf("intermediate_size %d\n", c->intermediate_size);
    printf("heads             %d (kv heads %d, head_dim %d%s)\n", c->n_heads, c->n_kv_heads, c->head_dim,
           c->n_kv_heads < c->n_heads ? ", grouped-query" : "");
    printf("vocab_size        %d\n", c->vocab_size);
    printf("context           %d\n", c->max_positions);
    printf("tied embeddings   %s\n", c->tie_word_embeddings ? "yes" : "no");
}

int cmd_inspect(int argc, char **argv) {
    cli_args a;
    args_init(&a, "inspect", argc, argv);
    if (a.help) {
        printf("usage: peft inspect --model DIR [--tensors]\n"
               "  Prints the architecture from config.json, the parameter count per dtype and,\n"
               "  with --tensors, every tensor with its dtype and shape.\n");
        return 0;
    }
    const char *dir = args_str(&a, "--model", NULL);
    int list = args_has(&a, "--tensors");
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir) {
        fprintf(stderr, "peft inspect: --model DIR is required\n");
        return 2;
    }
    peft_err err = {0};
    peft_model *m;
    peft_model_load_opts lo = {.task = PEFT_TASK_CAUSAL_LM, .shapes_only = 1}; /* config.json, no weights bound */
    if (peft_model_load(dir, &lo, &m, &err)) return cli_report(err.msg);
    peft_weights *opened = NULL; /* a GGUF's tensors come with the model (as the model sees them: f32, HF names) */
    if (!m->weights && peft_weights_open(dir, &opened, &err)) {
        peft_model_free(m);
        return cli_report(err.msg);
    }
    const peft_weights *w = m->weights ? m->weights : opened;
    print_info(&m->info);
    size_t per_dtype[PEFT_DTYPE_COUNT] = {0}, total = 0, bytes = 0;
    int n_tensors = 0;
    for (int f = 0; f < w->n_files; f++)
        for (int i = 0; i < w->files[f]->n_tensors; i++) {
            const peft_st_tensor *t = &w->files[f]->tensors[i];
            per_dtype[t->dtype] += t->numel;
            total += t->numel;
            bytes += t->nbytes;
            n_tensors++;
        }
    printf("files             %d\n", w->n_files);
    printf("tensors           %d\n", n_tensors);
    printf("parameters        %zu (%.2f M, %.1f MB on disk)\n", total, total / 1e6, bytes / 1e6);
    for (int d = 0; d < PEFT_DTYPE_COUNT; d++)
        if (per_dtype[d]) printf("  %-5s           %zu\n", peft_dtype_name((peft_dtype)d), per_dtype[d]);
    if (list) {
        for (int f = 0; f < w->n_files; f++)
            for (int i = 0; i < w->files[f]->n_tensors; i++) {
                const peft_st_tensor *t = &w->files[f]->tensors[i];
                printf("%-60s %-5s [", t->name, peft_dtype_name(t->dtype));
                for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
                printf("]\n");
            }
    }
    peft_weights_close(opened);
    peft_model_free(m);
    return 0;
}
