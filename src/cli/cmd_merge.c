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

int cmd_merge(int argc, char **argv) {
    cli_args a;
    args_init(&a, "merge", argc, argv);
    if (a.help) {
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
    if (peft_same_path(dir, out)) {
        fprintf(stderr, "peft merge: --out must differ from --model (the base checkpoint is kept intact)\n");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    if (cli_model_load(dir, adapter, &cm, &err)) return cli_report(err.msg);
    rc = peft_adapter_set_merge(cm.adapters, +1, &err);
    if (rc == PEFT_OK) rc = peft_model_save_hf(cm.model, out, &err);
    if (rc == PEFT_OK)
        printf("merged %d adapted layers of %s into %s\n", peft_adapter_set_n_sites(cm.adapters), dir, out);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
