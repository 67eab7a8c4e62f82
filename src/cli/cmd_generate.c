/* cmd_generate.c: `peft generate`: greedy or sampled continuation with a KV cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "methods/adapter_set.h"
#include "models/sampler.h"

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

static int is_eos(const peft_llama_config *c, const cli_model *cm, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == id) return 1;
    return cm->tok && peft_tokenizer_eos_id(cm->tok) == id;
}

/* Prints the text of out[0..n) that has not been printed yet (decoding the whole tail keeps
 * multi-byte characters split across tokens intact). */
static int print_new_text(const cli_model *cm, const int32_t *out, size_t n, size_t *printed, peft_err *err) {
    char *text;
    int rc = peft_tokenizer_decode(cm->tok, out, n, 1, &text, err);
    if (rc) return rc;
    size_t len = strlen(text);
    if (len > *printed) {
        fputs(text + *printed, stdout);
        fflush(stdout);
        *printed = len;
    }
    free(text);
    return PEFT_OK;
}

int cmd_generate(int argc, char **argv) {
    cli_args a;
    args_init(&a, "generate", argc, argv);
    if (args_has(&a, "--help")) {
        usage();
        return 0;
    }
    const char *dir = args_str(&a, "--model", NULL), *prompt = args_str(&a, "--prompt", NULL),
               *prompt_ids = args_str(&a, "--prompt-ids", NULL), *adapter = args_str(&a, "--adapter", NULL);
    long max_new = args_int(&a, "--max-new", 64), seed = args_int(&a, "--seed", 0);
    double temperature = args_double(&a, "--temperature", 0.0), top_p = args_double(&a, "--top-p", 1.0);
    int ignore_eos = args_has(&a, "--ignore-eos");
    int bf16 = args_has(&a, "--bf16"), f16 = args_has(&a, "--f16");
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || (!prompt == !prompt_ids) || max_new < 0 || top_p <= 0) {
        fprintf(stderr, "peft generate: needs --model and exactly one of --prompt / --prompt-ids (see --help)\n");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_model_load(dir, adapter, &cm, &err)) return cli_report(err.msg);
    if (cli_use_half(cm.model, bf16, f16, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    const peft_llama_config *c = &cm.model->cfg;
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_ids) rc = cli_parse_ids(prompt_ids, "--prompt-ids", &ids, &n, &err);
    else if (!cm.tok) rc = peft_fail(&err, PEFT_EINVAL, "%s has no tokenizer.json: use --prompt-ids", dir);
    else rc = peft_tokenizer_encode(cm.tok, prompt, strlen(prompt), 1, &ids, &n, &err);
    if (rc == PEFT_OK && n == 0) rc = peft_fail(&err, PEFT_EINVAL, "the prompt is empty");
    llama_kv_cache kv = {0};
    int chunk = n > 64 ? 64 : (int)n;
    if (rc == PEFT_OK) rc = llama_kv_alloc(cm.model, (int)(n + (size_t)max_new), chunk, &kv, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(cm.adapters, chunk, &err);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    sample_candidate *scratch = malloc((size_t)c->vocab_size * sizeof *scratch);
    int32_t *out = malloc(((size_t)max_new + 1) * sizeof *out);
    if (rc == PEFT_OK && (!logits || !scratch || !out)) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    /* Prefill the prompt in chunks, then one token at a time. */
    for (size_t i = 0; rc == PEFT_OK && i < n; i += (size_t)chunk) {
        int len = (int)(n - i < (size_t)chunk ? n - i : (size_t)chunk);
        rc = llama_decode(cm.model, &kv, ids + i, len, logits, &err);
    }
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)seed, 0x67656e);
    size_t n_out = 0, printed = 0;
    if (rc == PEFT_OK && prompt) printf("%s", prompt);
    for (long s = 0; rc == PEFT_OK && s < max_new; s++) {
        int next = sample_next(logits, c->vocab_size, (float)temperature, (float)top_p, &rng, scratch);
        out[n_out++] = next;
        if (prompt) rc = print_new_text(&cm, out, n_out, &printed, &err);
        if ((!ignore_eos && is_eos(c, &cm, next)) || s + 1 == max_new || rc) break;
        rc = llama_decode(cm.model, &kv, &out[n_out - 1], 1, logits, &err);
    }
    if (rc == PEFT_OK) {
        if (prompt) printf("\n");
        else {
            for (size_t i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", out[i]);
            printf("\n");
        }
    }
    free(logits);
    free(scratch);
    free(out);
    free(ids);
    llama_kv_free(&kv);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
