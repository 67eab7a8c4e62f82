/* fuzz_safetensors.c: libFuzzer target for the safetensors reader (peft_st_parse).
 * Any input must give an error or a file whose tensors all lie inside the input with
 * shape x dtype == byte length, sorted, findable by name, and not overlapping; the float ones
 * are widened to f32 so that ASan sees every byte they claim. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    /* An exactly sized copy: reads past `size` are heap overflows ASan reports. */
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    peft_err err = {0};
    peft_st_file *f = NULL;
    int rc = peft_st_parse(buf, size, "fuzz", &f, &err);
    if (rc != PEFT_OK) {
        REQUIRE(f == NULL);
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz"));
    } else {
        REQUIRE(f != NULL);
        for (int i = 0; i < f->n_tensors; i++) {
            const peft_st_tensor *t = &f->tensors[i];
            const unsigned char *p = t->data;
            REQUIRE(t->ndim >= 0 && t->ndim <= PEFT_ST_MAX_DIMS);
            size_t numel = 1;
            for (int d = 0; d < t->ndim; d++) {
                REQUIRE(t->shape[d] >= 0);
                numel *= (size_t)t->shape[d];
            }
            REQUIRE(numel == t->numel && t->nbytes == numel * peft_dtype_size(t->dtype));
            REQUIRE(p >= buf + 8 && p <= buf + size && t->nbytes <= (size_t)(buf + size - p));
            REQUIRE(peft_st_find(f, t->name) == t);
            if (i) REQUIRE(strcmp(f->tensors[i - 1].name, t->name) < 0);
            if (t->numel && t->numel <= 4096) {
                float tmp[4096];
                if (peft_convert_to_f32(tmp, t->data, t->dtype, t->numel) == 0) {
                    volatile float sink = tmp[t->numel - 1];
                    (void)sink;
                }
            }
        }
        /* no two non-empty tensors share a byte */
        for (int i = 0; i < f->n_tensors && f->n_tensors <= 64; i++)
            for (int j = i + 1; j < f->n_tensors; j++) {
                const peft_st_tensor *a = &f->tensors[i], *b = &f->tensors[j];
                if (!a->nbytes || !b->nbytes) continue;
                const unsigned char *a0 = a->data, *b0 = b->data;
                REQUIRE(a0 + a->nbytes <= b0 || b0 + b->nbytes <= a0);
            }
        if (f->metadata_json) REQUIRE(f->metadata_json[0] == '{');
        peft_st_close(f);
    }
    free(buf);
    return 0;
}
