/* cmd_generate.c: `peft generate`: greedy or sampled continuation with a KV cache. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "methods/adapter_set.h"
#include "models/generate.h"

static void usage(void) {
    printf("usage: peft generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
           "  --max-new N        new tokens (default 64)\n"
           "  --temperature T    0 = greedy (default), else sample from softmax(logits / T)\n"
           "  --top-p P          nucleus sampling mass (default 1 = off)\n"
           "  --seed S           sampling seed (default 0)\n"
           CLI_HALF_HELP
           "  --adapter DIR      generate with a PEFT adapter attached\n"
           "  --ignore-eos       keep going past the end-of-sequence token\n"
           "  With --prompt-ids the new ids are printed; with --prompt the decoded text.\n");
}

int cmd_generate(int argc, char **argv) {
    cli_args a;
    args_init(&a, "generate", argc, argv);
    const char *dir = args_str(&a, "--model", NULL), *prompt = args_str(&a, "--prompt", NULL),
               *prompt_ids = args_str(&a, "--prompt-ids", NULL), *adapter = args_str(&a, "--adapter", NULL);
    long max_new = args_int(&a, "--max-new", 64, 0, CLI_MAX_SEQ), seed = args_int(&a, "--seed", 0, 0, LONG_MAX);
    double temperature = args_real(&a, "--temperature", 0.0, CLI_CLOSED(0, 100)),
           top_p = args_real(&a, "--top-p", 1.0, CLI_ABOVE(0, 1));
    int ignore_eos = args_has(&a, "--ignore-eos");
    cli_precision prec;
    cli_precision_args(&a, &prec);
    prec.quantize = args_str(&a, "--quantize", NULL);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !prompt == !prompt_ids) {
        fprintf(stderr, "peft generate: %s (see peft generate --help)\n",
                !dir ? "--model DIR is required" : "give exactly one of --prompt / --prompt-ids");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_precision_resolve(&prec, dir, 0, &err)) return cli_report(err.msg);
    peft_model_load_opts lo = {.task = PEFT_TASK_CAUSAL_LM, .keep_blocks = prec.keep_blocks};
    if (cli_model_load_ex(dir, adapter, &lo, &cm, &err)) return cli_report(err.msg);
    if (cli_precision_apply(cm.model, &prec, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_ids) rc = cli_parse_ids(prompt_ids, "--prompt-ids", &ids, &n, &err);
    else if (!cm.tok) rc = peft_fail(&err, PEFT_EINVAL, "%s has no tokenizer.json: use --prompt-ids", dir);
    else rc = peft_tokenizer_encode(cm.tok, prompt, strlen(prompt), 1, &ids, &n, &err);
    peft_gen g = {0};
    if (rc == PEFT_OK) rc = peft_gen_init(&g, cm.model, ids, n, (size_t)max_new, (float)temperature, (float)top_p,
                                          (uint64_t)seed, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(cm.adapters, g.chunk, &err);
    if (rc == PEFT_OK) rc = peft_gen_prefill(&g, cm.model, &err);
    size_t shown = 0;
    if (rc == PEFT_OK && prompt) printf("%s", prompt);
    for (int done = max_new == 0; rc == PEFT_OK && !done;) {
        int32_t next;
        rc = peft_gen_sample(&g, cm.model, cm.tok, ignore_eos, &next, &done, &err);
        char *text = NULL;
        if (rc == PEFT_OK && prompt && (rc = peft_gen_new_text(&g, cm.tok, done, &shown, &text, &err)) == PEFT_OK) {
            fputs(text, stdout);
            fflush(stdout);
        }
        free(text);
        if (rc == PEFT_OK && !done) rc = peft_gen_decode(&g, cm.model, &err);
    }
    const int32_t *out = g.seq ? g.seq + g.n_prompt : NULL;
    size_t n_out = g.n_out;
    if (rc == PEFT_OK) {
        if (prompt) printf("\n");
        else {
            for (size_t i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", out[i]);
            printf("\n");
        }
    }
    free(ids);
    peft_gen_free(&g);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
