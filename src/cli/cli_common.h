/* cli_common.h: what several subcommands share: loading a model with its optional tokenizer
 * and adapter, and parsing id lists. */
#ifndef PEFT_CLI_COMMON_H
#define PEFT_CLI_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/llama.h"
#include "tokenizer/tokenizer.h"

typedef struct cli_model {
    peft_llama *model;
    peft_tokenizer *tok;  /* NULL when the model directory has no tokenizer.json */
    struct peft_adapter_set *adapters; /* NULL without --adapter */
} cli_model;

/* Loads DIR (config, weights, tokenizer if present) and attaches the adapter in adapter_dir
 * (may be NULL). */
int cli_model_load(const char *dir, const char *adapter_dir, cli_model *cm, peft_err *err);
void cli_model_free(cli_model *cm);

/* Parses "1,2,3" or "1 2 3" (any mix of commas and whitespace) into a malloc'ed array. */
int cli_parse_ids(const char *s, const char *what, int32_t **ids, size_t *n, peft_err *err);

#endif
