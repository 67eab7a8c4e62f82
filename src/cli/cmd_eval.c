/* cmd_eval.c: `peft eval`: mean next-token loss (nats/token) and perplexity on a file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "fileio.h"
#include "methods/adapter_set.h"

static void usage(void) {
    printf("usage: peft eval --model DIR --data FILE [options]\n"
           "  Mean next-token cross-entropy (nats/token) and perplexity over FILE, read in\n"
           "  non-overlapping windows of --seq-len tokens (no context carried across windows).\n"
           "  --data FILE       text (tokenized with DIR/tokenizer.json, BOS added) or token ids\n"
           "  --ids             FILE holds token ids (comma/whitespace separated), not text\n"
           CLI_HALF_HELP
           "  --adapter DIR     evaluate with a PEFT adapter attached\n"
           "  --seq-len T       window length (default 256)\n"
           "  --batch B         windows per forward pass (default 4)\n"
           "  --max-tokens N    evaluate at most N tokens (default all)\n");
}

/* Loads the evaluation tokens: ids as written, or the text encoded by the model's tokenizer. */
static int load_tokens(const cli_model *cm, const char *path, int as_ids, int32_t **ids, size_t *n, peft_err *err) {
    char *text;
    size_t len;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    if (as_ids) rc = cli_parse_ids(text, path, ids, n, err);
    else if (!cm->tok)
        rc = peft_fail(err, PEFT_EINVAL, "%s has no tokenizer.json: pass token ids with --ids", cm->model->dir);
    else rc = peft_tokenizer_encode(cm->tok, text, len, 1, ids, n, err);
    free(text);
    if (rc == PEFT_OK && *n < 2) {
        free(*ids);
        *ids = NULL;
        rc = peft_fail(err, PEFT_EINVAL, "%s: needs at least 2 tokens to evaluate, found %zu", path, *n);
    }
    return rc;
}

int cmd_eval(int argc, char **argv) {
    cli_args a;
    args_init(&a, "eval", argc, argv);
    if (args_has(&a, "--help")) {
        usage();
        return 0;
    }
    const char *dir = args_str(&a, "--model", NULL), *data = args_str(&a, "--data", NULL),
               *adapter = args_str(&a, "--adapter", NULL);
    int as_ids = args_has(&a, "--ids");
    long T = args_int(&a, "--seq-len", 256), B = args_int(&a, "--batch", 4), max_tokens = args_int(&a, "--max-tokens", 0);
    int bf16 = args_has(&a, "--bf16"), f16 = args_has(&a, "--f16");
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !data || T < 1 || B < 1 || max_tokens < 0) {
        fprintf(stderr, "peft eval: --model and --data are required; --seq-len and --batch must be positive\n");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_model_load(dir, adapter, &cm, &err)) return cli_report(err.msg);
    if (cli_use_half(cm.model, bf16, f16, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (load_tokens(&cm, data, as_ids, &ids, &n, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    if (max_tokens && (size_t)max_tokens < n) n = (size_t)max_tokens;
    /* With prompt tuning each window starts with the virtual tokens (placeholder ids, no loss). */
    long nv = cm.model->n_virtual, Td = T - nv;
    if (Td < 1) {
        free(ids);
        cli_model_free(&cm);
        return cli_report("--seq-len leaves no room after the adapter's virtual tokens");
    }
    size_t n_windows = (n - 1 + (size_t)Td - 1) / (size_t)Td;
    if ((size_t)B > n_windows) B = (long)n_windows;
    llama_acts acts;
    int32_t *inp = malloc((size_t)B * T * sizeof *inp), *tgt = malloc((size_t)B * T * sizeof *tgt);
    rc = llama_acts_alloc(cm.model, (int)B, (int)T, 0, 0, &acts, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(cm.adapters, (int)(B * T), &err);
    if (rc == PEFT_OK && (!inp || !tgt)) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    double total_loss = 0;
    long counted_total = 0;
    for (size_t w0 = 0; rc == PEFT_OK && w0 < n_windows; w0 += (size_t)B) {
        /* Window w predicts tokens w*Td+1 .. w*Td+Td from the tokens before them. */
        for (long b = 0; b < B; b++)
            for (long t = 0; t < T; t++) {
                size_t i = (w0 + (size_t)b) * (size_t)Td + (size_t)(t - nv);
                int data = t >= nv;
                inp[b * T + t] = data && i < n ? ids[i] : 0;
                tgt[b * T + t] = data && i + 1 < n ? ids[i + 1] : -1;
            }
        double loss;
        int counted;
        rc = llama_forward(cm.model, &acts, inp, NULL, tgt, &loss, &counted, &err);
        total_loss += loss * counted;
        counted_total += counted;
    }
    if (rc == PEFT_OK) {
        double mean = total_loss / (double)counted_total;
        printf("tokens      %ld\nloss        %.6f nats/token\nperplexity  %.4f\n", counted_total, mean, exp(mean));
    }
    free(inp);
    free(tgt);
    free(ids);
    llama_acts_free(&acts);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
