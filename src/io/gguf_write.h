/* gguf_write.h: writing GGUF v3 files (the layout of gguf.h): metadata of every value type,
 * tensor infos, and the data section, each tensor at a multiple of the alignment (32, or the
 * u32 general.alignment when one is added). The file is written atomically (fileio.h): a
 * temporary beside the path, fsync'ed and renamed, so an interrupted export leaves no torn file.
 *
 * Usage: init, add keys and tensors in the order they should appear, write, free. Adding never
 * fails on the spot: running out of memory, a duplicate key or tensor name, or a bad shape is
 * remembered (the first problem wins) and peft_gguf_write reports it. Tensor data is not copied:
 * it must stay valid until peft_gguf_write returns. */
#ifndef PEFT_IO_GGUF_WRITE_H
#define PEFT_IO_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "io/gguf.h"

typedef struct peft_gguf_wtensor {
    char *name;
    int type;                       /* PEFT_GGML_* */
    int ndim;
    int64_t ne[PEFT_GGUF_MAX_DIMS]; /* ggml order: ne[0] fastest */
    const void *data;
    size_t nbytes;
} peft_gguf_wtensor;

typedef struct peft_gguf_writer {
    unsigned char *kv; /* the encoded metadata section */
    size_t kv_len, kv_cap;
    char **keys;       /* [n_kv], for the duplicate check */
    int n_kv, cap_keys;
    peft_gguf_wtensor *t;
    int n_t, cap_t;
    size_t alignment;
    peft_err problem;  /* the first problem met while adding (code 0: none) */
} peft_gguf_writer;

void peft_gguf_writer_init(peft_gguf_writer *w);
void peft_gguf_writer_free(peft_gguf_writer *w);

/* A scalar of value type `type` (PEFT_GGUF_U8 .. F64, BOOL; not STRING or ARRAY) whose
 * little-endian bytes are at v. */
void peft_gguf_add_scalar(peft_gguf_writer *w, const char *key, int type, const void *v);
void peft_gguf_add_u32(peft_gguf_writer *w, const char *key, uint32_t v);
void peft_gguf_add_f32(peft_gguf_writer *w, const char *key, float v);
void peft_gguf_add_str(peft_gguf_writer *w, const char *key, const char *s, size_t len);
/* An array of n scalars of type elem_type, little-endian bytes at data. */
void peft_gguf_add_array(peft_gguf_writer *w, const char *key, int elem_type, uint64_t n, const void *data);
/* An array of n strings s[i] of len[i] bytes. */
void peft_gguf_add_str_array(peft_gguf_writer *w, const char *key, uint64_t n, const char *const *s, const size_t *len);
/* An entry of a file read with peft_gguf_open, as it is (arrays of arrays included). */
void peft_gguf_add_kv(peft_gguf_writer *w, const peft_gguf_kv *kv);

/* A tensor of nbytes bytes at data (kept by the caller until written). */
void peft_gguf_add_tensor(peft_gguf_writer *w, const char *name, int type, int ndim, const int64_t *ne, const void *data,
                          size_t nbytes);

/* Writes the file at path; fails with the first problem met while adding, if any. */
int peft_gguf_write(const peft_gguf_writer *w, const char *path, peft_err *err);

/* Bytes of n values of type (f32, f16, bf16, q8_0: n a multiple of 32), or 0 for another type. */
size_t peft_gguf_type_bytes(int type, size_t n);
/* dst[peft_gguf_type_bytes(type, n)] = src[n] in type (f32, f16, bf16 rounded to nearest even,
 * as numpy / torch cast; q8_0 as gguf.quants.quantize). Returns 0, or -1 for a type it cannot
 * write or n not a multiple of the block. */
int peft_gguf_encode(int type, const float *src, size_t n, void *dst);

#endif
