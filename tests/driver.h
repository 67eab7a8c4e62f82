/* driver.h: what the parity drivers of the C tests share: the model in DIR/model/ and the token
 * batch in DIR/batch.safetensors (I32 [B, T] tensors such as "ids", "targets", "pos"). */
#ifndef PEFT_TESTS_DRIVER_H
#define PEFT_TESTS_DRIVER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "models/llama.h"

/* Loads DIR/model and opens DIR/batch.safetensors; its "ids" must be I32 [B, T]. On error
 * nothing stays open. */
static int driver_open(const char *dir, peft_llama **m, peft_st_file **batch, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model", dir);
    /* PEFT_DRIVER_KEEP_BLOCKS=1: a GGUF's block-typed linear weights stay as read (LLAMA_KEEP_BLOCKS) */
    const char *keep = getenv("PEFT_DRIVER_KEEP_BLOCKS");
    int rc = llama_load_ex(path, keep && !strcmp(keep, "1") ? LLAMA_KEEP_BLOCKS : 0, m, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    rc = peft_st_open(path, batch, err);
    const peft_st_tensor *ids = rc ? NULL : peft_st_find(*batch, "ids");
    if (rc == PEFT_OK && (!ids || ids->dtype != PEFT_I32 || ids->ndim != 2)) {
        peft_st_close(*batch);
        rc = peft_fail(err, PEFT_EFORMAT, "%s: needs I32 ids [B, T]", path);
    }
    if (rc) llama_free(*m);
    return rc;
}

#endif
