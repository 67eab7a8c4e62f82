/* driver_gguf.c: the C side of tests/gguf/test_gguf_dequant.py.
 *
 *   driver_gguf IN.gguf OUT.safetensors
 * dequantizes every tensor of IN (peft_gguf_dequantize) and writes it as an F32 tensor of the
 * same name with the PyTorch-order shape (ne reversed). On a file the reader refuses it prints
 * the message on stderr and exits 1 (the test checks messages of corrupt files that way). */
#include <stdio.h>
#include <stdlib.h>

#include "io/gguf.h"
#include "io/safetensors.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: driver_gguf IN.gguf OUT.safetensors\n");
        return 2;
    }
    peft_err err = {0};
    peft_gguf_file *f;
    if (peft_gguf_open(argv[1], &f, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    peft_st_entry *e = calloc((size_t)f->n_tensors + 1, sizeof *e);
    int rc = e ? PEFT_OK : peft_fail(&err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; rc == PEFT_OK && i < f->n_tensors; i++) {
        const peft_gguf_tensor *t = &f->tensors[i];
        float *v = malloc((t->numel ? t->numel : 1) * sizeof(float));
        if (!v) {
            rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
            break;
        }
        peft_gguf_dequantize(t, v);
        e[i] = (peft_st_entry){.name = t->name, .dtype = PEFT_F32, .ndim = t->ndim, .data = v};
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->ne[t->ndim - 1 - d];
    }
    if (rc == PEFT_OK) rc = peft_st_write(argv[2], e, f->n_tensors, NULL, 0, &err);
    for (int i = 0; e && i < f->n_tensors; i++) free((void *)e[i].data);
    free(e);
    peft_gguf_close(f);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    return rc ? 1 : 0;
}
