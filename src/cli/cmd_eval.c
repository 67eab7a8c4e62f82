/* cmd_eval.c: `peft eval`: mean next-token loss (nats/token) and perplexity on a file. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "fileio.h"
#include "methods/adapter_set.h"
#include "train/cls_data.h"
#include "train/metrics.h"
#include "train/trainer.h"

static void usage(void) {
    printf("usage: peft eval --model DIR --data FILE [options]\n"
           "  Mean next-token cross-entropy (nats/token) and perplexity over FILE, read in\n"
           "  non-overlapping windows of --seq-len tokens (no context carried across windows).\n"
           "  --task seq-cls|image-cls: `accuracy` and, with two labels, `f1` (of label 1) over the\n"
           "  labelled examples of FILE (TSV/JSONL, or an ImageFolder directory).\n"
           "  --data FILE       text (tokenized with DIR/tokenizer.json, BOS added) or token ids\n"           "                    (.jsonl/.json: records read as `peft train` reads them, the loss taken\n"
           "                    where training takes it: completions, assistant turns)\n"
           "  --ids             FILE holds token ids (comma/whitespace separated), not text\n"
           CLI_HALF_HELP
           CLI_TASK_HELP
           "  --adapter DIR     evaluate with a PEFT adapter attached\n"
           "  --seq-len T       window length (default 256); seq-cls: tokens an example (truncated)\n"
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

/* JSON records (.jsonl, .json) are read as `peft train` reads them (train/data.h): the loss is
 * the one training takes (completions, assistant turns, EOS), over every record. */
static int eval_records(cli_model *cm, const char *path, long T, long B, long max_tokens, peft_err *err) {
    long nv = cm->model->virt.n_virtual;
    if (max_tokens) return peft_fail(err, PEFT_EINVAL, "%s: --max-tokens is for text and --ids files, not JSON records", path);
    if (T - nv < 2) return peft_fail(err, PEFT_EINVAL, "--seq-len leaves no room after the adapter's virtual tokens");
    if (!cm->tok) return peft_fail(err, PEFT_EINVAL, "%s has no tokenizer.json to read %s", cm->model->dir, path);
    peft_data_opts o = {(int)(T - nv), 0, 0, NULL, 1};
    peft_dataset *ds;
    int rc = peft_dataset_load(path, cm->tok, &o, &ds, err);
    if (rc) return rc;
    if (peft_dataset_dropped(ds))
        fprintf(stderr, "warning: %s: %d records dropped: their prompt fills --seq-len %ld\n", path, peft_dataset_dropped(ds), T);
    int rows = peft_dataset_rows(ds, 0);
    double loss;
    int Bm = (int)(B < rows ? B : rows);
    rc = peft_adapter_set_reserve(cm->adapters, Bm * (int)T, err);
    if (rc == PEFT_OK) rc = peft_evaluate(cm->model, cm->adapters, ds, Bm, (int)T, 0, 0, &loss, err);
    if (rc == PEFT_OK)
        printf("examples    %d\nloss        %.6f nats/token\nperplexity  %.4f\n", peft_dataset_examples(ds, 0), loss, exp(loss));
    peft_dataset_free(ds);
    return rc;
}

static int is_records(const char *path) {
    size_t n = strlen(path);
    return (n > 6 && !strcmp(path + n - 6, ".jsonl")) || (n > 5 && !strcmp(path + n - 5, ".json"));
}

/* seq-cls / image-cls: accuracy over the labelled examples and, with two classes, the F1 of
 * class 1 (train/metrics.h), each on its own line. */
static int eval_cls(const cli_model *cm, const char *data, int T, int B, peft_err *err) {
    peft_cls_dataset *ds = NULL;
    double *probs;
    int32_t *pred;
    int rc = cli_cls_run(cm, data, T, B, &ds, &probs, &pred, err);
    if (rc == PEFT_OK) {
        printf("examples %d\naccuracy %.6f\n", ds->n, peft_accuracy(pred, ds->labels, ds->n));
        if (cm->model->info.n_labels == 2) printf("f1 %.6f\n", peft_f1_class(pred, ds->labels, ds->n, 1));
    }
    free(probs);
    free(pred);
    peft_cls_free(ds);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    cli_args a;
    args_init(&a, "eval", argc, argv);
    const char *dir = args_str(&a, "--model", NULL), *data = args_str(&a, "--data", NULL),
               *adapter = args_str(&a, "--adapter", NULL);
    int as_ids = args_has(&a, "--ids");
    long T = args_int(&a, "--seq-len", 256, 1, CLI_MAX_SEQ), B = args_int(&a, "--batch", 4, 1, CLI_MAX_BATCH);
    long max_tokens = args_int(&a, "--max-tokens", 0, 2, LONG_MAX); /* 0: all */
    cli_precision prec;
    cli_precision_args(&a, &prec);
    prec.quantize = args_str(&a, "--quantize", NULL);
    peft_model_load_opts lo = {0};
    cli_task_args(&a, &lo);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !data) {
        fprintf(stderr, "peft eval: %s is required (see peft eval --help)\n", !dir ? "--model DIR" : "--data FILE");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_precision_resolve(&prec, dir, 0, &err)) return cli_report(err.msg);
    lo.keep_blocks = prec.keep_blocks;
    if (cli_model_load_ex(dir, adapter, &lo, &cm, &err)) return cli_report(err.msg);
    if (cli_precision_apply(cm.model, &prec, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    if (lo.task != PEFT_TASK_CAUSAL_LM) {
        rc = eval_cls(&cm, data, (int)T, (int)B, &err);
        cli_model_free(&cm);
        return rc ? cli_report(err.msg) : 0;
    }
    if (!as_ids && is_records(data)) {
        rc = eval_records(&cm, data, T, B, max_tokens, &err);
        cli_model_free(&cm);
        return rc ? cli_report(err.msg) : 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (load_tokens(&cm, data, as_ids, &ids, &n, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    if (max_tokens && (size_t)max_tokens < n) n = (size_t)max_tokens;
    /* With prompt / prefix tuning each window starts with the virtual tokens (placeholder ids),
     * then Td tokens. With prompt tuning the last virtual position predicts the window's first
     * token, as HF PEFT's loss does (labels = input_ids): window w predicts tokens w*Td ..
     * w*Td+Td-1, each token once. Otherwise (prefix tuning's virtual tokens are a cache, with no
     * prediction) window w predicts tokens w*Td+1 .. w*Td+Td from the tokens before them. */
    long nv = cm.model->virt.n_virtual, Td = T - nv, first = nv && cm.model->virt.emb;
    if (Td < 1) {
        free(ids);
        cli_model_free(&cm);
        return cli_report("--seq-len leaves no room after the adapter's virtual tokens");
    }
    size_t n_windows = (n - 1 + (size_t)first + (size_t)Td - 1) / (size_t)Td;
    if ((size_t)B > n_windows) B = (long)n_windows;
    peft_acts *acts = NULL;
    int32_t *inp = malloc((size_t)B * T * sizeof *inp), *tgt = malloc((size_t)B * T * sizeof *tgt);
    rc = peft_model_acts_alloc(cm.model, (int)B, (int)T, 0, 0, &acts, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(cm.adapters, (int)(B * T), &err);
    if (rc == PEFT_OK && (!inp || !tgt)) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    double total_loss = 0;
    long counted_total = 0;
    for (size_t w0 = 0; rc == PEFT_OK && w0 < n_windows; w0 += (size_t)B) {
        for (long b = 0; b < B; b++)
            for (long t = 0; t < T; t++) {
                long i = ((long)w0 + b) * Td + t - nv; /* the token at position t (-1: before the window) */
                inp[b * T + t] = t >= nv && i < (long)n ? ids[i] : 0;
                /* the last position's target would be the next window's first token with prompt tuning */
                tgt[b * T + t] = t >= nv - first && t < T - first && i + 1 < (long)n ? ids[i + 1] : -1;
            }
        double loss;
        int counted;
        peft_batch batch = {.B = (int)B, .T = (int)T, .ids = inp, .targets = tgt};
        rc = peft_model_forward(cm.model, acts, &batch, &loss, &counted, &err);
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
    peft_model_acts_free(cm.model, acts);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
