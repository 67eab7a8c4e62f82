/* main.c: the `peft` command-line tool; dispatches to one cmd_* per subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kernels/kernels.h"
#include "peft.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"inspect", cmd_inspect, "show a model's architecture, parameter count, dtypes and tensors"},
    {"eval", cmd_eval, "mean loss (nats/token) and perplexity of a model on a text file"},
    {"generate", cmd_generate, "sample or greedy-decode a continuation of a prompt"},
    {"tokenize", cmd_tokenize, "encode text to token ids (or decode ids) with a model's tokenizer"},
    {"predict", cmd_predict, "a classification model's label and probabilities for each example (JSONL)"},
    {"train", cmd_train, "fine-tune a model with a PEFT method and save the adapter"},
    {"merge", cmd_merge, "merge an adapter into its base model and write an HF checkpoint"},
    {"combine", cmd_combine, "combine LoRA adapters into one, as PEFT's add_weighted_adapter (svd, cat, ties, dare, ...)"},
    {"export", cmd_export, "write an adapter as a llama.cpp GGUF LoRA, or the merged model as one GGUF"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server over the model and named adapters"},
};

int cli_report(const char *msg) {
    fprintf(stderr, "peft: error: %s\n", msg);
    return 1;
}

static void usage(FILE *fp) {
    fprintf(fp, "peft %d.%d.%d: parameter-efficient fine-tuning of Hugging Face models\n\nusage: peft <command> [options]\n\n",
            PEFT_VERSION_MAJOR, PEFT_VERSION_MINOR, PEFT_VERSION_PATCH);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(fp, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(fp, "\nRun `peft <command> --help` for a command's options.\n");
}

int main(int argc, char **argv) {
    peft_runtime_reexec(argv);
    peft_threads_init(0); /* one OpenMP pool; OpenBLAS single-threaded (bench/README.md: faster on 2 cores) */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("peft %d.%d.%d\n", PEFT_VERSION_MAJOR, PEFT_VERSION_MINOR, PEFT_VERSION_PATCH);
        const char *wait = getenv("OMP_WAIT_POLICY");
        printf("runtime: OpenBLAS %s kernels, single-threaded in one OpenMP pool; OMP_WAIT_POLICY=%s\n", peft_blas_core(),
               wait ? wait : "");
        printf("16-bit matmuls: --f16 %s, --bf16 %s\n", peft_half_f16.native ? "AVX512-FP16" : "sgemm fallback (slow)",
               peft_half_bf16.native ? "AVX512-BF16" : "sgemm fallback (slow)");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "peft: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
