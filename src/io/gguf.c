/* gguf.c: a validating GGUF v3 reader; the block formats themselves live in kernels/quant.c. */
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "kernels/quant.h"

/* ---- tensor types ---------------------------------------------------------------- */

typedef struct ggml_type_info {
    int type;
    const char *name;
    int block;      /* elements per block */
    int type_size;  /* bytes per block */
} ggml_type_info;

static const ggml_type_info type_table[] = {
    {PEFT_GGML_F32, "F32", 1, 4},     {PEFT_GGML_F16, "F16", 1, 2},       {PEFT_GGML_BF16, "BF16", 1, 2},
    {PEFT_GGML_Q8_0, "Q8_0", 32, 34}, {PEFT_GGML_Q4_0, "Q4_0", 32, 18},   {PEFT_GGML_Q4_1, "Q4_1", 32, 20},
    {PEFT_GGML_Q4_K, "Q4_K", 256, 144}, {PEFT_GGML_Q5_K, "Q5_K", 256, 176}, {PEFT_GGML_Q6_K, "Q6_K", 256, 210},
};

static const ggml_type_info *type_info(int type) {
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++)
        if (type_table[i].type == type) return &type_table[i];
    return NULL;
}

const char *peft_ggml_type_name(int type) {
    const ggml_type_info *ti = type_info(type);
    return ti ? ti->name : NULL;
}

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static float h2f(const unsigned char *p) { return peft_f16_to_f32(rd16(p)); }

void peft_gguf_dequantize(const peft_gguf_tensor *t, float *dst) {
    const unsigned char *p = t->data;
    const peft_qformat *qf = peft_qformat_of_ggml(t->type);
    if (qf) { /* blocks run along rows, so the whole tensor dequantizes as one long row */
        qf->dequantize_row(dst, p, (int64_t)t->numel);
        return;
    }
    for (size_t i = 0; i < t->numel; i++) {
        switch (t->type) {
        case PEFT_GGML_F32: memcpy(dst + i, p + 4 * i, 4); break;
        case PEFT_GGML_F16: dst[i] = h2f(p + 2 * i); break;
        case PEFT_GGML_BF16: dst[i] = peft_bf16_to_f32(rd16(p + 2 * i)); break;
        }
    }
}

/* ---- parsing ------------------------------------------------------------------------ */

/* A cursor over the file; every read checks the bytes left. */
typedef struct cursor {
    const unsigned char *base, *p, *end;
    const char *what;
    peft_err *err;
} cursor;

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

static int need(cursor *c, size_t n, const char *field) {
    if (n > left(c))
        return peft_fail(c->err, PEFT_EFORMAT, "%s: %s at byte %zu needs %zu bytes but the file ends after %zu; file truncated?",
                         c->what, field, (size_t)(c->p - c->base), n, left(c));
    return PEFT_OK;
}

static int get_u32(cursor *c, uint32_t *v, const char *field) {
    int rc = need(c, 4, field);
    if (rc == PEFT_OK) *v = rd32(c->p), c->p += 4;
    return rc;
}

static int get_u64(cursor *c, uint64_t *v, const char *field) {
    int rc = need(c, 8, field);
    if (rc == PEFT_OK) *v = rd64(c->p), c->p += 8;
    return rc;
}

/* A string: *s points at its bytes (not NUL-terminated). */
static int get_str(cursor *c, const char **s, size_t *n, const char *field) {
    uint64_t len;
    int rc = get_u64(c, &len, field);
    if (rc) return rc;
    if (len > PEFT_GGUF_MAX_STRING)
        return peft_fail(c->err, PEFT_EFORMAT, "%s: %s: string length %llu exceeds the limit of %u", c->what, field,
                         (unsigned long long)len, PEFT_GGUF_MAX_STRING);
    if ((rc = need(c, (size_t)len, field))) return rc;
    *s = (const char *)c->p;
    *n = (size_t)len;
    c->p += len;
    return PEFT_OK;
}

static const int scalar_size[PEFT_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static int is_scalar(int t) { return t >= 0 && t < PEFT_GGUF_NTYPES && t != PEFT_GGUF_STRING && t != PEFT_GGUF_ARRAY; }

/* Skips one value of type t (depth: nesting of arrays, bounded). */
static int skip_value(cursor *c, uint32_t t, int depth, const char *key) {
    if (is_scalar((int)t)) {
        int rc = need(c, (size_t)scalar_size[t], key);
        if (rc == PEFT_OK) c->p += scalar_size[t];
        return rc;
    }
    if (t == PEFT_GGUF_STRING) {
        const char *s;
        size_t n;
        return get_str(c, &s, &n, key);
    }
    if (t != PEFT_GGUF_ARRAY) return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": unknown value type %u", c->what, key, t);
    if (depth >= 3) return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": arrays nested deeper than 3", c->what, key);
    uint32_t et;
    uint64_t n;
    int rc;
    if ((rc = get_u32(c, &et, key)) || (rc = get_u64(c, &n, key))) return rc;
    if (is_scalar((int)et)) {
        if (n > left(c) / (size_t)scalar_size[et])
            return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": array of %llu elements runs past the end of the file", c->what,
                             key, (unsigned long long)n);
        c->p += n * (size_t)scalar_size[et];
        return PEFT_OK;
    }
    for (uint64_t i = 0; i < n; i++)
        if ((rc = skip_value(c, et, depth + 1, key))) return rc;
    return PEFT_OK;
}

/* Reads one metadata entry into kv (key already read). */
static int parse_value(cursor *c, peft_gguf_kv *kv) {
    uint32_t t;
    int rc = get_u32(c, &t, kv->key);
    if (rc) return rc;
    if (t >= PEFT_GGUF_NTYPES) return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": unknown value type %u", c->what, kv->key, t);
    kv->type = (int)t;
    if (t != PEFT_GGUF_ARRAY) {
        const unsigned char *start = c->p;
        if ((rc = skip_value(c, t, 0, kv->key))) return rc;
        if (t == PEFT_GGUF_BOOL && *start > 1)
            return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": bool value %u is neither 0 nor 1", c->what, kv->key, *start);
        kv->data = start;
        kv->nbytes = (size_t)(c->p - start);
        return PEFT_OK;
    }
    uint32_t et;
    uint64_t n;
    if ((rc = get_u32(c, &et, kv->key)) || (rc = get_u64(c, &n, kv->key))) return rc;
    if (et >= PEFT_GGUF_NTYPES)
        return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": unknown array element type %u", c->what, kv->key, et);
    kv->arr_type = (int)et;
    kv->n = n;
    kv->data = c->p;
    if (et == PEFT_GGUF_STRING) {
        if (n > left(c) / 8) /* each element needs at least its 8-byte length */
            return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": array of %llu strings runs past the end of the file", c->what,
                             kv->key, (unsigned long long)n);
        if (!(kv->str_off = malloc((size_t)(n ? n : 1) * sizeof *kv->str_off)))
            return peft_fail(c->err, PEFT_ENOMEM, "%s: out of memory for key \"%s\"", c->what, kv->key);
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            size_t len;
            kv->str_off[i] = (size_t)(c->p - kv->data);
            if ((rc = get_str(c, &s, &len, kv->key))) return rc;
        }
    } else if (et == PEFT_GGUF_ARRAY) { /* arrays of arrays: skipped, never read */
        for (uint64_t i = 0; i < n; i++)
            if ((rc = skip_value(c, et, 1, kv->key))) return rc;
    } else if (n > left(c) / (size_t)scalar_size[et]) {
        return peft_fail(c->err, PEFT_EFORMAT, "%s: key \"%s\": array of %llu elements runs past the end of the file", c->what,
                         kv->key, (unsigned long long)n);
    } else {
        c->p += n * (size_t)scalar_size[et];
    }
    kv->nbytes = (size_t)(c->p - kv->data);
    return PEFT_OK;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

static int parse_tensor_info(cursor *c, int index, peft_gguf_tensor *t) {
    const char *s;
    size_t n;
    char field[48];
    snprintf(field, sizeof field, "tensor %d name", index);
    int rc = get_str(c, &s, &n, field);
    if (rc) return rc;
    if (n == 0 || n > 255 || memchr(s, 0, n))
        return peft_fail(c->err, PEFT_EFORMAT, "%s: tensor %d: name of %zu bytes (needs 1..255, no NUL)", c->what, index, n);
    if (!(t->name = dup_n(s, n))) return peft_fail(c->err, PEFT_ENOMEM, "%s: out of memory", c->what);
    uint32_t nd, type;
    if ((rc = get_u32(c, &nd, t->name))) return rc;
    if (nd < 1 || nd > PEFT_GGUF_MAX_DIMS)
        return peft_fail(c->err, PEFT_EFORMAT, "%s: tensor \"%s\": %u dimensions (needs 1..%d)", c->what, t->name, nd, PEFT_GGUF_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    for (int d = 0; d < PEFT_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if ((rc = get_u64(c, &v, t->name))) return rc;
        if (v > (uint64_t)INT64_MAX || !peft_mul_ok(numel, (size_t)v, &numel) || numel > (size_t)INT64_MAX)
            return peft_fail(c->err, PEFT_EFORMAT, "%s: tensor \"%s\": dimensions overflow", c->what, t->name);
        t->ne[d] = (int64_t)v;
    }
    t->numel = numel;
    if ((rc = get_u32(c, &type, t->name))) return rc;
    const ggml_type_info *ti = type_info((int)type);
    if (!ti)
        return peft_fail(c->err, PEFT_EUNSUPPORTED,
                         "%s: tensor \"%s\": ggml type %u is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                         c->what, t->name, type);
    t->type = (int)type;
    if (t->ne[0] % ti->block)
        return peft_fail(c->err, PEFT_EFORMAT, "%s: tensor \"%s\": %s rows of %lld values are not a multiple of its %d-value block",
                         c->what, t->name, ti->name, (long long)t->ne[0], ti->block);
    if (!peft_mul_ok(numel / (size_t)ti->block, (size_t)ti->type_size, &t->nbytes))
        return peft_fail(c->err, PEFT_EFORMAT, "%s: tensor \"%s\": byte size overflows", c->what, t->name);
    uint64_t off;
    if ((rc = get_u64(c, &off, t->name))) return rc;
    t->data = (const unsigned char *)(uintptr_t)off; /* relative to the data section until it is known */
    return PEFT_OK;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(**(char *const *const *)a, **(char *const *const *)b); }

/* Refuses two equal strings among n records of `stride` bytes whose first member is a char*. */
static int check_unique(const void *recs, int n, size_t stride, const char *kind, const char *what, peft_err *err) {
    if (n < 2) return PEFT_OK;
    char *const **p = malloc((size_t)n * sizeof *p);
    if (!p) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    for (int i = 0; i < n; i++) p[i] = (char *const *)((const char *)recs + (size_t)i * stride);
    qsort(p, (size_t)n, sizeof *p, cmp_str_ptr);
    int rc = PEFT_OK;
    for (int i = 1; i < n && rc == PEFT_OK; i++)
        if (!strcmp(*p[i - 1], *p[i])) rc = peft_fail(err, PEFT_EFORMAT, "%s: duplicate %s \"%s\"", what, kind, *p[i]);
    free(p);
    return rc;
}

static int cmp_tensor_data(const void *a, const void *b) {
    const peft_gguf_tensor *x = *(const peft_gguf_tensor *const *)a, *y = *(const peft_gguf_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Places the tensors in the data section [data, data + size) and checks alignment and overlap. */
static int place_tensors(peft_gguf_file *f, const unsigned char *data, size_t size, const char *what, peft_err *err) {
    for (int i = 0; i < f->n_tensors; i++) {
        peft_gguf_tensor *t = &f->tensors[i];
        uint64_t off = (uint64_t)(uintptr_t)t->data;
        if (off % f->alignment)
            return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": offset %llu is not a multiple of the alignment %zu", what, t->name,
                             (unsigned long long)off, f->alignment);
        if (off > size || t->nbytes > size - (size_t)off)
            return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": %zu bytes at offset %llu are past the end of the data (%zu bytes); file truncated?",
                             what, t->name, t->nbytes, (unsigned long long)off, size);
        t->data = data + off;
    }
    if (f->n_tensors < 2) return PEFT_OK;
    const peft_gguf_tensor **by = malloc((size_t)f->n_tensors * sizeof *by);
    if (!by) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    for (int i = 0; i < f->n_tensors; i++) by[i] = &f->tensors[i];
    qsort(by, (size_t)f->n_tensors, sizeof *by, cmp_tensor_data);
    int rc = PEFT_OK;
    for (int i = 1; i < f->n_tensors && rc == PEFT_OK; i++)
        if (by[i - 1]->data + by[i - 1]->nbytes > by[i]->data)
            rc = peft_fail(err, PEFT_EFORMAT, "%s: tensors \"%s\" and \"%s\" overlap in the data section", what, by[i - 1]->name,
                           by[i]->name);
    free(by);
    return rc;
}

static int parse_body(cursor *c, peft_gguf_file *f) {
    const char *what = c->what;
    peft_err *err = c->err;
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    int rc;
    if (left(c) < 4 || memcmp(c->p, "GGUF", 4)) return peft_fail(err, PEFT_EFORMAT, "%s: not a GGUF file (no \"GGUF\" magic)", what);
    if ((rc = get_u32(c, &magic, "magic")) || (rc = get_u32(c, &f->version, "version"))) return rc;
    if (f->version != 2 && f->version != 3)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are)", what, f->version);
    if ((rc = get_u64(c, &n_tensors, "tensor count")) || (rc = get_u64(c, &n_kv, "metadata count"))) return rc;
    /* Each entry takes at least 12 (key/value) or 24 (tensor info) bytes: bound before allocating. */
    if (n_kv > PEFT_GGUF_MAX_KV || n_kv > left(c) / 12)
        return peft_fail(err, PEFT_EFORMAT, "%s: %llu metadata entries cannot fit in the file", what, (unsigned long long)n_kv);
    if (n_tensors > PEFT_GGUF_MAX_TENSORS || n_tensors > left(c) / 24)
        return peft_fail(err, PEFT_EFORMAT, "%s: %llu tensors cannot fit in the file", what, (unsigned long long)n_tensors);
    f->kv = calloc((size_t)n_kv + 1, sizeof *f->kv);
    f->tensors = calloc((size_t)n_tensors + 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    for (uint64_t i = 0; i < n_kv; i++) {
        peft_gguf_kv *kv = &f->kv[f->n_kv];
        const char *s;
        size_t n;
        char field[48];
        snprintf(field, sizeof field, "metadata key %llu", (unsigned long long)i);
        if ((rc = get_str(c, &s, &n, field))) return rc;
        if (n == 0 || memchr(s, 0, n)) return peft_fail(err, PEFT_EFORMAT, "%s: %s is empty or holds a NUL byte", what, field);
        if (!(kv->key = dup_n(s, n))) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
        f->n_kv++;
        if ((rc = parse_value(c, kv))) return rc;
    }
    if ((rc = check_unique(f->kv, f->n_kv, sizeof *f->kv, "metadata key", what, err))) return rc;
    f->alignment = 32;
    const peft_gguf_kv *al = peft_gguf_find(f, "general.alignment");
    if (al) {
        uint32_t a = al->type == PEFT_GGUF_U32 ? rd32(al->data) : 0;
        if (!a || (a & (a - 1)))
            return peft_fail(err, PEFT_EFORMAT, "%s: key \"general.alignment\" must be a u32 power of two", what);
        f->alignment = a;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        peft_gguf_tensor *t = &f->tensors[f->n_tensors];
        rc = parse_tensor_info(c, (int)i, t);
        if (t->name) f->n_tensors++;
        if (rc) return rc;
    }
    if ((rc = check_unique(f->tensors, f->n_tensors, sizeof *f->tensors, "tensor name", what, err))) return rc;
    size_t pos = (size_t)(c->p - c->base), pad = (f->alignment - pos % f->alignment) % f->alignment;
    if (f->n_tensors && pad > left(c))
        return peft_fail(err, PEFT_EFORMAT, "%s: the data section (aligned to %zu) starts past the end of the file", what, f->alignment);
    const unsigned char *data = pad > left(c) ? c->end : c->p + pad;
    return place_tensors(f, data, (size_t)(c->end - data), what, err);
}

int peft_gguf_parse(const unsigned char *buf, size_t size, const char *what, peft_gguf_file **out, peft_err *err) {
    *out = NULL;
    peft_gguf_file *f = calloc(1, sizeof *f);
    if (!f) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    peft_err local = {0};
    cursor c = {buf, buf, buf + size, what, err ? err : &local};
    int rc = parse_body(&c, f);
    if (rc == PEFT_OK && !(f->path = strdup(what))) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    if (rc) {
        peft_gguf_close(f);
        return rc;
    }
    *out = f;
    return PEFT_OK;
}

int peft_gguf_open(const char *path, peft_gguf_file **out, peft_err *err) {
    peft_mapping m;
    *out = NULL;
    int rc = peft_map_file(path, &m, err);
    if (rc) return rc;
    if ((rc = peft_gguf_parse(m.data, m.size, path, out, err))) {
        peft_unmap_file(&m);
        return rc;
    }
    (*out)->map = m;
    return PEFT_OK;
}

void peft_gguf_close(peft_gguf_file *f) {
    if (!f) return;
    for (int i = 0; f->kv && i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].str_off);
    }
    for (int i = 0; f->tensors && i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(f->path);
    peft_unmap_file(&f->map);
    free(f);
}

int peft_gguf_is_file(const char *path) {
    if (!peft_file_exists(path)) return 0;
    FILE *fp = fopen(path, "rb");
    char magic[4] = {0};
    int ok = fp && fread(magic, 1, 4, fp) == 4 && !memcmp(magic, "GGUF", 4);
    if (fp) fclose(fp);
    return ok;
}

/* ---- metadata access ------------------------------------------------------------------ */

const peft_gguf_kv *peft_gguf_find(const peft_gguf_file *f, const char *key) {
    for (int i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const peft_gguf_tensor *peft_gguf_find_tensor(const peft_gguf_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static const char *const vtype_names[PEFT_GGUF_NTYPES] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                          "bool", "string", "array", "u64", "i64", "f64"};

/* A scalar of numeric type t at p as double (integers above 2^53 rounded); *is_int: not a float type. */
static double num_at(int t, const unsigned char *p, int *is_int) {
    *is_int = 1;
    switch (t) {
    case PEFT_GGUF_U8: return p[0];
    case PEFT_GGUF_I8: return (int8_t)p[0];
    case PEFT_GGUF_U16: return rd16(p);
    case PEFT_GGUF_I16: return (int16_t)rd16(p);
    case PEFT_GGUF_U32: return rd32(p);
    case PEFT_GGUF_I32: return (int32_t)rd32(p);
    case PEFT_GGUF_U64: return (double)rd64(p);
    case PEFT_GGUF_I64: return (double)(int64_t)rd64(p);
    case PEFT_GGUF_BOOL: return p[0];
    }
    *is_int = 0;
    if (t == PEFT_GGUF_F32) {
        float v;
        uint32_t u = rd32(p);
        memcpy(&v, &u, 4);
        return v;
    }
    double v;
    uint64_t u = rd64(p);
    memcpy(&v, &u, 8);
    return v;
}

static const peft_gguf_kv *lookup(const peft_gguf_file *f, const char *key, int required, peft_err *err, int *rc) {
    const peft_gguf_kv *kv = peft_gguf_find(f, key);
    *rc = !kv && required ? peft_fail(err, PEFT_EFORMAT, "%s: missing metadata key \"%s\"", f->path, key) : PEFT_OK;
    return kv;
}

int peft_gguf_get_int(const peft_gguf_file *f, const char *key, int required, int64_t lo, int64_t hi, int64_t *out,
                      peft_err *err) {
    int rc, is_int;
    const peft_gguf_kv *kv = lookup(f, key, required, err, &rc);
    if (!kv) return rc;
    if (!is_scalar(kv->type) || kv->type == PEFT_GGUF_BOOL || kv->type == PEFT_GGUF_F32 || kv->type == PEFT_GGUF_F64)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" is a %s, expected an integer", f->path, key, vtype_names[kv->type]);
    double v = num_at(kv->type, kv->data, &is_int);
    if (kv->type == PEFT_GGUF_U64 && rd64(kv->data) > (uint64_t)INT64_MAX) v = 1e19;
    if (v < (double)lo || v > (double)hi)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" = %.0f is outside [%lld, %lld]", f->path, key, v, (long long)lo, (long long)hi);
    *out = kv->type == PEFT_GGUF_U64 || kv->type == PEFT_GGUF_I64 ? (int64_t)rd64(kv->data) : (int64_t)v;
    return PEFT_OK;
}

int peft_gguf_get_float(const peft_gguf_file *f, const char *key, int required, double *out, peft_err *err) {
    int rc, is_int;
    const peft_gguf_kv *kv = lookup(f, key, required, err, &rc);
    if (!kv) return rc;
    if (!is_scalar(kv->type) || kv->type == PEFT_GGUF_BOOL)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" is a %s, expected a number", f->path, key, vtype_names[kv->type]);
    *out = num_at(kv->type, kv->data, &is_int);
    return PEFT_OK;
}

int peft_gguf_get_bool(const peft_gguf_file *f, const char *key, int required, int *out, peft_err *err) {
    int rc;
    const peft_gguf_kv *kv = lookup(f, key, required, err, &rc);
    if (!kv) return rc;
    if (kv->type != PEFT_GGUF_BOOL)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" is a %s, expected a bool", f->path, key, vtype_names[kv->type]);
    *out = kv->data[0];
    return PEFT_OK;
}

int peft_gguf_get_str(const peft_gguf_file *f, const char *key, int required, const char **s, size_t *len, peft_err *err) {
    int rc;
    const peft_gguf_kv *kv = lookup(f, key, required, err, &rc);
    if (!kv) return rc;
    if (kv->type != PEFT_GGUF_STRING)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" is a %s, expected a string", f->path, key, vtype_names[kv->type]);
    *len = (size_t)rd64(kv->data);
    *s = (const char *)kv->data + 8;
    return PEFT_OK;
}

int peft_gguf_get_array(const peft_gguf_file *f, const char *key, int required, int elem_type, uint64_t n,
                        const peft_gguf_kv **out, peft_err *err) {
    int rc;
    const peft_gguf_kv *kv = lookup(f, key, required, err, &rc);
    *out = NULL;
    if (!kv) return rc;
    if (kv->type != PEFT_GGUF_ARRAY || kv->arr_type == PEFT_GGUF_ARRAY)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" is a %s, expected an array", f->path, key, vtype_names[kv->type]);
    /* numeric arrays: any numeric element type reads through peft_gguf_arr_num */
    int ok = elem_type == PEFT_GGUF_STRING ? kv->arr_type == PEFT_GGUF_STRING : is_scalar(kv->arr_type);
    if (!ok)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" holds %ss, expected %ss", f->path, key, vtype_names[kv->arr_type],
                         vtype_names[elem_type]);
    if (kv->n != n)
        return peft_fail(err, PEFT_EFORMAT, "%s: key \"%s\" has %llu elements, expected %llu", f->path, key,
                         (unsigned long long)kv->n, (unsigned long long)n);
    *out = kv;
    return PEFT_OK;
}

const char *peft_gguf_arr_str(const peft_gguf_kv *kv, uint64_t i, size_t *len) {
    const unsigned char *p = kv->data + kv->str_off[i];
    *len = (size_t)rd64(p);
    return (const char *)p + 8;
}

double peft_gguf_arr_num(const peft_gguf_kv *kv, uint64_t i) {
    int is_int;
    return num_at(kv->arr_type, kv->data + (size_t)i * (size_t)scalar_size[kv->arr_type], &is_int);
}
