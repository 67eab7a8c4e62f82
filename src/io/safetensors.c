/* safetensors.c: a validating safetensors reader and an atomic writer. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const peft_st_tensor *)a)->name, ((const peft_st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const peft_st_tensor *x = *(const peft_st_tensor *const *)a, *y = *(const peft_st_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Parses one header entry into t. `data` is the start of the data section, of data_size bytes. */
static int parse_entry(const cJSON *item, const unsigned char *data, size_t data_size, const char *what,
                       peft_st_tensor *t, peft_err *err) {
    const char *name = item->string;
    if (!cJSON_IsObject(item)) return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": entry is not an object", what, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": needs string \"dtype\", arrays \"shape\" and \"data_offsets\"",
                         what, name);
    int dtype = peft_dtype_from_name(dt->valuestring);
    if (dtype < 0) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"%s\": unknown dtype \"%s\"", what, name, dt->valuestring);
    t->dtype = (peft_dtype)dtype;
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > PEFT_ST_MAX_DIMS)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": %d dimensions (max %d)", what, name, t->ndim, PEFT_ST_MAX_DIMS);
    size_t numel = 1;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        double v = cJSON_IsNumber(dim) ? dim->valuedouble : -1;
        if (v < 0 || v > 9.0e15 || v != (double)(int64_t)v)
            return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": shape entries must be non-negative integers", what, name);
        t->shape[d++] = (int64_t)v;
        if (!peft_mul_ok(numel, (size_t)v, &numel))
            return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": shape overflows", what, name);
    }
    t->numel = numel;
    if (!peft_mul_ok(numel, peft_dtype_size(t->dtype), &t->nbytes))
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": byte size overflows", what, name);
    if (cJSON_GetArraySize(offs) != 2)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": data_offsets must be [begin, end]", what, name);
    const cJSON *jb = cJSON_GetArrayItem(offs, 0), *je = cJSON_GetArrayItem(offs, 1);
    if (!cJSON_IsNumber(jb) || !cJSON_IsNumber(je) || jb->valuedouble < 0 || je->valuedouble < jb->valuedouble)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": data_offsets must be numbers with 0 <= begin <= end", what, name);
    double b = jb->valuedouble, e = je->valuedouble;
    /* Range check before any integer conversion: offsets past 2^64 must not reach a cast. */
    if (e > (double)data_size)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": data_offsets end %.0f is past the end of the data (%zu bytes); file truncated?",
                         what, name, e, data_size);
    if (b != (double)(size_t)b || e != (double)(size_t)e)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": data_offsets must be integers", what, name);
    size_t begin = (size_t)b, end = (size_t)e;
    if (end - begin != t->nbytes)
        return peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": shape and dtype %s need %zu bytes but data_offsets span %zu",
                         what, name, peft_dtype_name(t->dtype), t->nbytes, end - begin);
    t->data = data + begin;
    return PEFT_OK;
}

int peft_st_parse(const unsigned char *buf, size_t size, const char *what, peft_st_file **out, peft_err *err) {
    *out = NULL;
    if (size < 8) return peft_fail(err, PEFT_EFORMAT, "%s: too short for a safetensors file (%zu bytes)", what, size);
    uint64_t hlen = read_u64_le(buf);
    if (hlen > PEFT_ST_MAX_HEADER)
        return peft_fail(err, PEFT_EFORMAT, "%s: header length %llu exceeds the %u-byte limit", what, (unsigned long long)hlen,
                         PEFT_ST_MAX_HEADER);
    if (hlen > size - 8)
        return peft_fail(err, PEFT_EFORMAT, "%s: header length %llu is past the end of the file (%zu bytes); file truncated?", what,
                         (unsigned long long)hlen, size);
    cJSON *root;
    int rc = peft_json_parse((const char *)buf + 8, (size_t)hlen, what, &root, err);
    if (rc) return rc;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_EFORMAT, "%s: header is not a JSON object", what);
    }
    peft_st_file *f = calloc(1, sizeof *f);
    int n = cJSON_GetArraySize(root);
    if (!f || n > PEFT_ST_MAX_TENSORS || !(f->tensors = calloc((size_t)n + 1, sizeof *f->tensors))) {
        cJSON_Delete(root);
        free(f);
        return n > PEFT_ST_MAX_TENSORS ? peft_fail(err, PEFT_EFORMAT, "%s: %d tensors exceeds the limit", what, n)
                                       : peft_fail(err, PEFT_ENOMEM, "%s: out of memory reading header", what);
    }
    const unsigned char *data = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (!strcmp(item->string, "__metadata__")) {
            if (!cJSON_IsObject(item)) {
                rc = peft_fail(err, PEFT_EFORMAT, "%s: __metadata__ must be an object", what);
                break;
            }
            free(f->metadata_json);
            f->metadata_json = cJSON_PrintUnformatted(item);
            continue;
        }
        peft_st_tensor *t = &f->tensors[f->n_tensors];
        if ((rc = parse_entry(item, data, data_size, what, t, err))) break;
        if (!(t->name = strdup(item->string))) {
            rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
            break;
        }
        f->n_tensors++;
    }
    cJSON_Delete(root);
    if (rc == PEFT_OK) {
        qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
        for (int i = 1; i < f->n_tensors && rc == PEFT_OK; i++)
            if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
                rc = peft_fail(err, PEFT_EFORMAT, "%s: duplicate tensor name \"%s\"", what, f->tensors[i].name);
    }
    if (rc == PEFT_OK && f->n_tensors > 1) {
        /* Overlap check: sort pointers by start offset and compare neighbours. */
        const peft_st_tensor **by_off = malloc((size_t)f->n_tensors * sizeof *by_off);
        if (!by_off) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
        for (int i = 0; by_off && i < f->n_tensors; i++) by_off[i] = &f->tensors[i];
        if (by_off) qsort(by_off, (size_t)f->n_tensors, sizeof *by_off, cmp_tensor_offset);
        for (int i = 1; by_off && i < f->n_tensors && rc == PEFT_OK; i++) {
            const peft_st_tensor *a = by_off[i - 1], *b = by_off[i];
            if ((const unsigned char *)a->data + a->nbytes > (const unsigned char *)b->data)
                rc = peft_fail(err, PEFT_EFORMAT, "%s: tensors \"%s\" and \"%s\" overlap in the data section", what, a->name, b->name);
        }
        free(by_off);
    }
    if (rc == PEFT_OK && !(f->path = strdup(what))) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    if (rc) {
        peft_st_close(f);
        return rc;
    }
    *out = f;
    return PEFT_OK;
}

int peft_st_open(const char *path, peft_st_file **out, peft_err *err) {
    peft_mapping m;
    *out = NULL;
    int rc = peft_map_file(path, &m, err);
    if (rc) return rc;
    rc = peft_st_parse(m.data, m.size, path, out, err);
    if (rc) {
        peft_unmap_file(&m);
        return rc;
    }
    (*out)->map = m;
    return PEFT_OK;
}

void peft_st_close(peft_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->metadata_json);
    free(f->path);
    peft_unmap_file(&f->map);
    free(f);
}

const peft_st_tensor *peft_st_find(const peft_st_file *f, const char *name) {
    peft_st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

/* ---- writer ------------------------------------------------------------------ */

static int cmp_entry_ptr(const void *a, const void *b) {
    return strcmp((*(const peft_st_entry *const *)a)->name, (*(const peft_st_entry *const *)b)->name);
}

static size_t entry_bytes(const peft_st_entry *e) {
    size_t n = peft_dtype_size(e->dtype);
    for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
    return n;
}

int peft_st_write(const char *path, const peft_st_entry *entries, int n, const char *const *meta_kv, int n_meta,
                  peft_err *err) {
    const peft_st_entry **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    cJSON *root = cJSON_CreateObject();
    int rc = PEFT_OK;
    if (!order || !root) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    for (int i = 0; rc == PEFT_OK && i < n; i++) order[i] = &entries[i];
    if (rc == PEFT_OK) qsort(order, (size_t)n, sizeof *order, cmp_entry_ptr);
    if (rc == PEFT_OK && n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(meta, meta_kv[2 * i], meta_kv[2 * i + 1]);
    }
    size_t offset = 0;
    for (int i = 0; rc == PEFT_OK && i < n; i++) {
        const peft_st_entry *e = order[i];
        if (i > 0 && !strcmp(order[i - 1]->name, e->name)) {
            rc = peft_fail(err, PEFT_EINVAL, "%s: duplicate tensor name \"%s\"", path, e->name);
            break;
        }
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", peft_dtype_name(e->dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        size_t nb = entry_bytes(e);
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset + nb)));
        offset += nb;
    }
    char *header = rc == PEFT_OK ? cJSON_PrintUnformatted(root) : NULL;
    if (rc == PEFT_OK && !header) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    peft_atomic_file af;
    if (rc == PEFT_OK) rc = peft_atomic_open(&af, path, err);
    if (rc == PEFT_OK) {
        /* Pad the header with spaces so the data section starts 8-byte aligned, as HF does. */
        size_t hlen = strlen(header), padded = (hlen + 7) & ~(size_t)7;
        unsigned char lenbuf[8];
        for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        int ok = fwrite(lenbuf, 1, 8, af.fp) == 8 && fwrite(header, 1, hlen, af.fp) == hlen;
        for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', af.fp) != EOF;
        for (int i = 0; ok && i < n; i++) {
            size_t nb = entry_bytes(order[i]);
            ok = nb == 0 || fwrite(order[i]->data, 1, nb, af.fp) == nb;
        }
        if (!ok) {
            rc = peft_fail(err, PEFT_EIO, "%s: write failed: %s", path, strerror(errno));
            peft_atomic_abort(&af);
        } else {
            rc = peft_atomic_commit(&af, err);
        }
    }
    free(header);
    cJSON_Delete(root);
    free(order);
    return rc;
}

/* ---- model directories ------------------------------------------------------- */

static int weights_add(peft_weights *w, const char *path, peft_err *err) {
    peft_st_file **grown = realloc(w->files, (size_t)(w->n_files + 1) * sizeof *grown);
    if (!grown) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    w->files = grown;
    int rc = peft_st_open(path, &w->files[w->n_files], err);
    if (rc == PEFT_OK) w->n_files++;
    return rc;
}

/* Opens every distinct shard named in the index's weight_map. */
static int weights_open_index(peft_weights *w, const char *dir, const char *index_path, peft_err *err) {
    cJSON *root;
    int rc = peft_json_load(index_path, &root, err);
    if (rc) return rc;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_EFORMAT, "%s: missing object \"weight_map\"", index_path);
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        if (!cJSON_IsString(item) || strchr(item->valuestring, '/') || !strcmp(item->valuestring, "..")) {
            rc = peft_fail(err, PEFT_EFORMAT, "%s: weight_map[\"%s\"] must be a file name in the model directory", index_path,
                           item->string);
            break;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, item->valuestring);
        int seen = 0;
        for (int i = 0; i < w->n_files && !seen; i++) seen = !strcmp(w->files[i]->path, path);
        if (!seen && (rc = weights_add(w, path, err))) break;
    }
    if (rc == PEFT_OK) {
        /* Every mapped name must be found in the shard the index names. */
        cJSON_ArrayForEach(item, map) {
            const char *file = NULL;
            if (!peft_weights_find(w, item->string, &file) || strcmp(strrchr(file, '/') + 1, item->valuestring)) {
                rc = peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" is not in %s as the index says", index_path, item->string,
                               item->valuestring);
                break;
            }
        }
    }
    cJSON_Delete(root);
    return rc;
}

int peft_weights_open(const char *model_dir, peft_weights **out, peft_err *err) {
    *out = NULL;
    peft_weights *w = calloc(1, sizeof *w);
    if (!w) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    char path[4096];
    int rc;
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    if (peft_file_exists(path)) {
        rc = weights_add(w, path, err);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", model_dir);
        if (peft_file_exists(path)) rc = weights_open_index(w, model_dir, path, err);
        else rc = peft_fail(err, PEFT_EIO, "%s: no model.safetensors or model.safetensors.index.json", model_dir);
    }
    if (rc) {
        peft_weights_close(w);
        return rc;
    }
    *out = w;
    return PEFT_OK;
}

void peft_weights_close(peft_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->n_files; i++) peft_st_close(w->files[i]);
    free(w->files);
    free(w);
}

const peft_st_tensor *peft_weights_find(const peft_weights *w, const char *name, const char **file_path) {
    for (int i = 0; i < w->n_files; i++) {
        const peft_st_tensor *t = peft_st_find(w->files[i], name);
        if (t) {
            if (file_path) *file_path = w->files[i]->path;
            return t;
        }
    }
    return NULL;
}

int peft_weights_read_f32(const peft_weights *w, const char *name, int ndim, const int64_t *shape, float *dst,
                          peft_err *err) {
    const char *file = NULL;
    const peft_st_tensor *t = peft_weights_find(w, name, &file);
    if (!t)
        return peft_fail(err, PEFT_ESHAPE, "%s: missing tensor \"%s\"", w->n_files ? w->files[0]->path : "weights", name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char want[128] = "", got[128] = "";
        for (int d = 0; d < ndim; d++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)shape[d]);
        for (int d = 0; d < t->ndim; d++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)t->shape[d]);
        return peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" has shape [%s], expected [%s]", file, name, got, want);
    }
    if (peft_convert_to_f32(dst, t->data, t->dtype, t->numel) != 0)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"%s\" has dtype %s; expected a float type", file, name,
                         peft_dtype_name(t->dtype));
    return PEFT_OK;
}
