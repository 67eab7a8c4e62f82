/* gguf_write.c: the GGUF v3 writer (gguf_write.h). Metadata is encoded as it is added into
 * one growing buffer; tensor infos and data are laid out when the file is written. */
#include "gguf_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "fileio.h"
#include "kernels/quant.h"

#define DEFAULT_ALIGNMENT 32

/* Bytes of each scalar value type (PEFT_GGUF_*; 0 for STRING and ARRAY). */
static const unsigned char scalar_bytes[PEFT_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

void peft_gguf_writer_init(peft_gguf_writer *w) {
    memset(w, 0, sizeof *w);
    w->alignment = DEFAULT_ALIGNMENT;
}

void peft_gguf_writer_free(peft_gguf_writer *w) {
    for (int i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->keys), free(w->t), free(w->kv);
    memset(w, 0, sizeof *w);
}

/* Remembers the first problem; later adds become no-ops. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void problem(peft_gguf_writer *w, int code, const char *fmt, ...) {
    if (w->problem.code) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->problem.msg, sizeof w->problem.msg, fmt, ap);
    va_end(ap);
    w->problem.code = code;
}

/* Grows *p (of *cap elements of size sz) to hold need elements. */
static int grow(peft_gguf_writer *w, void **p, int *cap, size_t need, size_t sz) {
    if (need <= (size_t)*cap) return 1;
    size_t n = *cap ? (size_t)*cap * 2 : 16;
    while (n < need) n *= 2;
    void *q = n <= INT32_MAX ? realloc(*p, n * sz) : NULL;
    if (!q) {
        problem(w, PEFT_ENOMEM, "GGUF writer: out of memory");
        return 0;
    }
    *p = q;
    *cap = (int)n;
    return 1;
}

static void put(peft_gguf_writer *w, const void *bytes, size_t n) {
    if (w->problem.code || !n) return; /* n == 0: bytes may be NULL (no keys, an empty array) */
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        unsigned char *q = realloc(w->kv, cap);
        if (!q) {
        problem(w, PEFT_ENOMEM, "GGUF writer: out of memory for %zu bytes of metadata", cap);
        return;
    }
        w->kv = q;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, bytes, n);
    w->kv_len += n;
}

/* Little-endian integers, into a buffer or the metadata. */
static void le(unsigned char *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static void put_u32(peft_gguf_writer *w, uint32_t v) {
    unsigned char b[4];
    le(b, v, 4);
    put(w, b, 4);
}
static void put_u64(peft_gguf_writer *w, uint64_t v) {
    unsigned char b[8];
    le(b, v, 8);
    put(w, b, 8);
}
static void put_str(peft_gguf_writer *w, const char *s, size_t len) {
    put_u64(w, len);
    put(w, s, len);
}

/* Starts an entry: refuses a duplicate key, writes the key and the value type. */
static int begin_kv(peft_gguf_writer *w, const char *key, int type) {
    if (w->problem.code) return 0;
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) {
            problem(w, PEFT_EINVAL, "GGUF writer: key \"%s\" added twice", key);
            return 0;
        }
    if (!grow(w, (void **)&w->keys, &w->cap_keys, (size_t)w->n_kv + 1, sizeof *w->keys)) return 0;
    if (!(w->keys[w->n_kv] = strdup(key))) {
        problem(w, PEFT_ENOMEM, "GGUF writer: out of memory");
        return 0;
    }
    w->n_kv++;
    put_str(w, key, strlen(key));
    put_u32(w, (uint32_t)type);
    return !w->problem.code;
}

static int is_scalar(int type) { return type >= 0 && type < PEFT_GGUF_NTYPES && scalar_bytes[type]; }

void peft_gguf_add_scalar(peft_gguf_writer *w, const char *key, int type, const void *v) {
    if (!is_scalar(type)) {
        problem(w, PEFT_EINVAL, "GGUF writer: key \"%s\": %d is not a scalar type", key, type);
        return;
    }
    if (!begin_kv(w, key, type)) return;
    put(w, v, scalar_bytes[type]);
    if (!strcmp(key, "general.alignment") && type == PEFT_GGUF_U32) {
        uint32_t a = (uint32_t)((const unsigned char *)v)[0] | (uint32_t)((const unsigned char *)v)[1] << 8 |
                     (uint32_t)((const unsigned char *)v)[2] << 16 | (uint32_t)((const unsigned char *)v)[3] << 24;
        if (!a || (a & (a - 1))) {
        problem(w, PEFT_EINVAL, "GGUF writer: general.alignment %u is not a power of two", a);
        return;
    }
        w->alignment = a;
    }
}

void peft_gguf_add_u32(peft_gguf_writer *w, const char *key, uint32_t v) {
    unsigned char b[4];
    le(b, v, 4);
    peft_gguf_add_scalar(w, key, PEFT_GGUF_U32, b);
}

void peft_gguf_add_f32(peft_gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    unsigned char b[4];
    le(b, bits, 4);
    peft_gguf_add_scalar(w, key, PEFT_GGUF_F32, b);
}

void peft_gguf_add_str(peft_gguf_writer *w, const char *key, const char *s, size_t len) {
    if (begin_kv(w, key, PEFT_GGUF_STRING)) put_str(w, s, len);
}

void peft_gguf_add_array(peft_gguf_writer *w, const char *key, int elem_type, uint64_t n, const void *data) {
    if (!is_scalar(elem_type)) {
        problem(w, PEFT_EINVAL, "GGUF writer: key \"%s\": %d is not a scalar type", key, elem_type);
        return;
    }
    if (!begin_kv(w, key, PEFT_GGUF_ARRAY)) return;
    put_u32(w, (uint32_t)elem_type);
    put_u64(w, n);
    put(w, data, (size_t)n * scalar_bytes[elem_type]);
}

void peft_gguf_add_str_array(peft_gguf_writer *w, const char *key, uint64_t n, const char *const *s, const size_t *len) {
    if (!begin_kv(w, key, PEFT_GGUF_ARRAY)) return;
    put_u32(w, PEFT_GGUF_STRING);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) put_str(w, s[i], len[i]);
}

void peft_gguf_add_kv(peft_gguf_writer *w, const peft_gguf_kv *kv) {
    if (kv->type != PEFT_GGUF_ARRAY) {
        /* the reader's scalar bytes are the value itself; a string's start with its u64 length */
        if (!begin_kv(w, kv->key, kv->type)) return;
        put(w, kv->data, kv->nbytes);
        if (!strcmp(kv->key, "general.alignment") && kv->type == PEFT_GGUF_U32)
            w->alignment = (size_t)kv->data[0] | (size_t)kv->data[1] << 8 | (size_t)kv->data[2] << 16 | (size_t)kv->data[3] << 24;
        return;
    }
    if (!begin_kv(w, kv->key, PEFT_GGUF_ARRAY)) return;
    put_u32(w, (uint32_t)kv->arr_type);
    put_u64(w, kv->n);
    put(w, kv->data, kv->nbytes);
}

void peft_gguf_add_tensor(peft_gguf_writer *w, const char *name, int type, int ndim, const int64_t *ne, const void *data,
                          size_t nbytes) {
    if (w->problem.code) return;
    if (ndim < 1 || ndim > PEFT_GGUF_MAX_DIMS) {
        problem(w, PEFT_EINVAL, "GGUF writer: tensor \"%s\": %d dimensions", name, ndim);
        return;
    }
    for (int d = 0; d < ndim; d++)
        if (ne[d] < 1) {
        problem(w, PEFT_EINVAL, "GGUF writer: tensor \"%s\": dimension %d is %lld", name, d, (long long)ne[d]);
        return;
    }
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) {
        problem(w, PEFT_EINVAL, "GGUF writer: tensor \"%s\" added twice", name);
        return;
    }
    if (!grow(w, (void **)&w->t, &w->cap_t, (size_t)w->n_t + 1, sizeof *w->t)) return;
    peft_gguf_wtensor *t = &w->t[w->n_t];
    *t = (peft_gguf_wtensor){.type = type, .ndim = ndim, .data = data, .nbytes = nbytes};
    for (int d = 0; d < PEFT_GGUF_MAX_DIMS; d++) t->ne[d] = d < ndim ? ne[d] : 1;
    if (!(t->name = strdup(name))) {
        problem(w, PEFT_ENOMEM, "GGUF writer: out of memory");
        return;
    }
    w->n_t++;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

int peft_gguf_write(const peft_gguf_writer *w, const char *path, peft_err *err) {
    if (w->problem.code) return peft_fail(err, w->problem.code, "%s: %s", path, w->problem.msg);
    peft_atomic_file af;
    int rc = peft_atomic_open(&af, path, err);
    if (rc) return rc;
    /* header and metadata, then the tensor infos with offsets inside the data section */
    peft_gguf_writer head;
    peft_gguf_writer_init(&head);
    put(&head, "GGUF", 4);
    put_u32(&head, 3);
    put_u64(&head, (uint64_t)w->n_t);
    put_u64(&head, (uint64_t)w->n_kv);
    put(&head, w->kv, w->kv_len);
    size_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        const peft_gguf_wtensor *t = &w->t[i];
        put_str(&head, t->name, strlen(t->name));
        put_u32(&head, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) put_u64(&head, (uint64_t)t->ne[d]);
        put_u32(&head, (uint32_t)t->type);
        put_u64(&head, off);
        off = align_up(off + t->nbytes, w->alignment);
    }
    static const unsigned char zeros[256];
    size_t pad = align_up(head.kv_len, w->alignment) - head.kv_len;
    int ok = !head.problem.code && fwrite(head.kv, 1, head.kv_len, af.fp) == head.kv_len;
    for (; ok && pad > 0; pad -= pad > sizeof zeros ? sizeof zeros : pad)
        ok = fwrite(zeros, 1, pad > sizeof zeros ? sizeof zeros : pad, af.fp) > 0;
    for (int i = 0; ok && i < w->n_t; i++) {
        const peft_gguf_wtensor *t = &w->t[i];
        ok = fwrite(t->data, 1, t->nbytes, af.fp) == t->nbytes;
        for (pad = align_up(t->nbytes, w->alignment) - t->nbytes; ok && pad > 0; pad -= pad > sizeof zeros ? sizeof zeros : pad)
            ok = fwrite(zeros, 1, pad > sizeof zeros ? sizeof zeros : pad, af.fp) > 0;
    }
    if (head.problem.code) rc = peft_fail(err, head.problem.code, "%s: %s", path, head.problem.msg);
    else if (!ok) rc = peft_fail(err, PEFT_EIO, "%s: write failed: %s", af.tmp_path, strerror(errno));
    peft_gguf_writer_free(&head);
    if (rc) {
        peft_atomic_abort(&af);
        return rc;
    }
    return peft_atomic_commit(&af, err);
}

size_t peft_gguf_type_bytes(int type, size_t n) {
    switch (type) {
    case PEFT_GGML_F32: return 4 * n;
    case PEFT_GGML_F16:
    case PEFT_GGML_BF16: return 2 * n;
    case PEFT_GGML_Q8_0: return n % 32 ? 0 : n / 32 * 34;
    default: return 0;
    }
}

int peft_gguf_encode(int type, const float *src, size_t n, void *dst) {
    unsigned char *d = dst;
    switch (type) {
    case PEFT_GGML_F32:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &src[i], 4);
            le(d + 4 * i, bits, 4);
        }
        return 0;
    case PEFT_GGML_F16:
    case PEFT_GGML_BF16:
        for (size_t i = 0; i < n; i++) le(d + 2 * i, type == PEFT_GGML_F16 ? peft_f32_to_f16(src[i]) : peft_f32_to_bf16(src[i]), 2);
        return 0;
    case PEFT_GGML_Q8_0: { /* rows are independent blocks of 32: the flat array quantizes as one row */
        const peft_qformat *q = peft_qformat_of_ggml(PEFT_GGML_Q8_0);
        if (!q || !q->quantize_row || n % (size_t)q->block) return -1;
        q->quantize_row(dst, src, (int64_t)n);
        return 0;
    }
    default: return -1;
    }
}
