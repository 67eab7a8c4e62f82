/* cmd_predict.c: `peft predict`: a classification model's label and class probabilities for
 * every example of a file, one JSONL line each. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "train/cls_data.h"

static void usage(void) {
    printf("usage: peft predict --model DIR --task seq-cls|image-cls --data FILE [options]\n"
           "  Writes {\"label\": i, \"probs\": [...]} per example of FILE (TSV/JSONL sentences, or an\n"
           "  ImageFolder directory), in its order, to --out (default stdout).\n"
           CLI_TASK_HELP
           CLI_PRECISION_HELP
           "  --adapter DIR     predict with a PEFT adapter attached\n"
           "  --out FILE        write the lines here instead of stdout\n"
           "  --seq-len T       tokens an example (truncated; default 256)\n"
           "  --batch B         examples per forward pass (default 8)\n");
}

int cmd_predict(int argc, char **argv) {
    cli_args a;
    args_init(&a, "predict", argc, argv);
    const char *dir = args_str(&a, "--model", NULL), *data = args_str(&a, "--data", NULL),
               *adapter = args_str(&a, "--adapter", NULL), *out = args_str(&a, "--out", NULL);
    long T = args_int(&a, "--seq-len", 256, 1, CLI_MAX_SEQ), B = args_int(&a, "--batch", 8, 1, CLI_MAX_BATCH);
    cli_precision prec;
    cli_precision_args(&a, &prec);
    peft_model_load_opts lo = {0};
    cli_task_args(&a, &lo);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !data || lo.task == PEFT_TASK_CAUSAL_LM) {
        fprintf(stderr, "peft predict: %s (see peft predict --help)\n",
                !dir ? "--model DIR is required" : !data ? "--data FILE is required" : "--task seq-cls or image-cls is required");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_precision_resolve(&prec, dir, 0, &err)) return cli_report(err.msg);
    lo.keep_blocks = prec.keep_blocks;
    if (cli_model_load_ex(dir, adapter, &lo, &cm, &err)) return cli_report(err.msg);
    peft_cls_dataset *ds = NULL;
    double *probs = NULL;
    int32_t *pred = NULL;
    rc = cli_precision_apply(cm.model, &prec, 0, &err);
    if (rc == PEFT_OK) rc = cli_cls_run(&cm, data, (int)T, (int)B, &ds, &probs, &pred, &err);
    FILE *fp = rc == PEFT_OK ? (out ? fopen(out, "w") : stdout) : NULL;
    if (rc == PEFT_OK && !fp) rc = peft_fail(&err, PEFT_EIO, "%s: cannot open for writing", out);
    int NL = cm.model->info.n_labels;
    for (int i = 0; fp && i < ds->n; i++) {
        fprintf(fp, "{\"label\": %d, \"probs\": [", pred[i]);
        for (int c = 0; c < NL; c++) fprintf(fp, "%s%.9g", c ? ", " : "", probs[(size_t)i * NL + c]);
        fprintf(fp, "]}\n");
    }
    if (fp && (ferror(fp) | (fp != stdout ? fclose(fp) : fflush(fp))))
        rc = peft_fail(&err, PEFT_EIO, "%s: write failed", out ? out : "stdout");
    free(probs);
    free(pred);
    peft_cls_free(ds);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
