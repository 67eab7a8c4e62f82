/* cmd_inspect.c: `peft inspect --model DIR`: architecture, parameter count, dtypes, tensors. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "io/gguf.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

static void print_config(const peft_llama_config *c) {
    printf("architecture      %s\n", c->arch_name);
    printf("layers            %d\n", c->n_layers);
    printf("hidden_size       %d\n", c->hidden_size);
    printf("intermediate_size %d\n", c->intermediate_size);
    printf("heads             %d (kv heads %d, head_dim %d%s)\n", c->n_heads, c->n_kv_heads, c->head_dim,
           c->n_kv_heads < c->n_heads ? ", grouped-query" : "");
    printf("vocab_size        %d\n", c->vocab_size);
    printf("context           %d\n", c->max_position_embeddings);
    printf("rope_theta        %g%s\n", c->rope_theta, c->rope_llama3 ? " (llama3 scaling)" : "");
    printf("rms_norm_eps      %g\n", c->rms_norm_eps);
    printf("tied embeddings   %s\n", c->tie_word_embeddings ? "yes" : "no");
    printf("biases            q/k/v %s, o %s, mlp %s\n", c->qkv_bias ? "yes" : "no", c->o_bias ? "yes" : "no",
           c->mlp_bias ? "yes" : "no");
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
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    peft_llama_config cfg;
    peft_weights *w;
    if (peft_gguf_is_file(dir)) { /* a .gguf: its tensors as the model sees them (f32, HF names) */
        if (peft_gguf_open_llama(dir, &cfg, &w, &err)) return cli_report(err.msg);
    } else {
        if (peft_llama_config_load(path, &cfg, &err)) return cli_report(err.msg);
        if (peft_weights_open(dir, &w, &err)) return cli_report(err.msg);
    }
    print_config(&cfg);
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
    peft_weights_close(w);
    return 0;
}
