/* cls_data.c: classification datasets (cls_data.h): GLUE-style TSV and JSONL records read into
 * (text a, text b, label string, line) records, labels resolved for the whole file, texts
 * tokenized and truncated as the tokenizers library does; ImageFolder listings; batches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "train/data.h"
#include "io/json.h"
#include "train/cls_data.h"

#define CLS_MAX_COLUMNS 256

/* One example as read: owned, NUL-terminated copies. */
typedef struct cls_rec {
    char *a, *b, *label; /* b NULL for single texts */
    int line;
} cls_rec;

typedef struct cls_recs {
    cls_rec *r;
    int n, cap;
} cls_recs;

static void recs_free(cls_recs *rs) {
    for (int i = 0; i < rs->n; i++) free(rs->r[i].a), free(rs->r[i].b), free(rs->r[i].label);
    free(rs->r);
}

/* Takes ownership of a, b, label (freed here on failure). */
static int recs_push(cls_recs *rs, char *a, char *b, char *label, int line, peft_err *err) {
    if ((!a || !label) || (rs->n == rs->cap && rs->cap > (1 << 29))) goto oom;
    if (rs->n == rs->cap) {
        int cap = rs->cap ? rs->cap * 2 : 256;
        cls_rec *g = realloc(rs->r, (size_t)cap * sizeof *g);
        if (!g) goto oom;
        rs->r = g;
        rs->cap = cap;
    }
    rs->r[rs->n++] = (cls_rec){a, b, label, line};
    return PEFT_OK;
oom:
    free(a), free(b), free(label);
    return peft_fail(err, PEFT_ENOMEM, "out of memory");
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

/* ---- TSV ---- */

typedef struct span { const char *s; size_t n; } span;

/* Splits line [s, s+n) on TAB into f[] (at most max); returns the field count (max + 1 when
 * there are more). */
static int split_tabs(const char *s, size_t n, span *f, int max) {
    int k = 0;
    size_t b = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\t') continue;
        if (k == max) return max + 1;
        f[k++] = (span){s + b, i - b};
        b = i + 1;
    }
    return k;
}

/* A well-formed CSV quoted field: "..." with every inner quote doubled. */
static int csv_quoted(span f) {
    if (f.n < 2 || f.s[0] != '"' || f.s[f.n - 1] != '"') return 0;
    for (size_t i = 1; i + 1 < f.n; i++) {
        if (f.s[i] != '"') continue;
        if (i + 2 >= f.n || f.s[i + 1] != '"') return 0;
        i++;
    }
    return 1;
}

/* The field's text: unquoted ("" -> ") when the file is CSV-quoted and the field is quoted. */
static char *field_text(span f, int quoted) {
    if (!quoted || !csv_quoted(f)) return dup_n(f.s, f.n);
    char *d = malloc(f.n), *o = d;
    if (!d) return NULL;
    for (size_t i = 1; i + 1 < f.n; i++) {
        *o++ = f.s[i];
        if (f.s[i] == '"') i++;
    }
    *o = 0;
    return d;
}

/* Next line of text starting at *pos: [*s, *s + *n) without "\n" / "\r\n". Returns 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, span *line) {
    if (*pos >= len) return 0;
    const char *s = text + *pos, *e = memchr(s, '\n', len - *pos);
    size_t n = e ? (size_t)(e - s) : len - *pos;
    *pos += n + (e != NULL);
    if (n && s[n - 1] == '\r') n--;
    *line = (span){s, n};
    return 1;
}

static int column(const span *h, int nh, const char *name) {
    for (int i = 0; i < nh; i++)
        if (h[i].n == strlen(name) && !memcmp(h[i].s, name, h[i].n)) return i;
    return -1;
}

static int read_tsv(const char *text, size_t len, const char *path, cls_recs *rs, peft_err *err) {
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) text += 3, len -= 3;
    span *f = malloc((CLS_MAX_COLUMNS + 1) * 2 * sizeof *f), *h = f + CLS_MAX_COLUMNS + 1;
    if (!f) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    size_t pos = 0;
    span line;
    int lineno = 0, nh = 0, rc = PEFT_OK;
    while (next_line(text, len, &pos, &line) && (lineno++, line.n == 0)) {}
    if (lineno == 0 || line.n == 0) rc = peft_fail(err, PEFT_EFORMAT, "%s: empty file (no header row)", path);
    else if ((nh = split_tabs(line.s, line.n, h, CLS_MAX_COLUMNS)) > CLS_MAX_COLUMNS)
        rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: more than %d columns", path, lineno, CLS_MAX_COLUMNS);
    static const char *const pairs[][2] = {{"sentence1", "sentence2"}, {"text_a", "text_b"}, {"#1 String", "#2 String"}};
    int ca = -1, cb = -1, cl = -1;
    for (int i = 0; !rc && i < 3 && ca < 0; i++)
        if ((ca = column(h, nh, pairs[i][0])) >= 0 && (cb = column(h, nh, pairs[i][1])) < 0)
            rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: column \"%s\" without \"%s\"", path, lineno, pairs[i][0], pairs[i][1]);
    if (!rc && ca < 0 && (ca = column(h, nh, "sentence")) < 0 && (ca = column(h, nh, "text")) < 0)
        rc = peft_fail(err, PEFT_EFORMAT,
                       "%s:%d: no text column in the header (sentence, text, or the pairs sentence1/sentence2, text_a/text_b)",
                       path, lineno);
    if (!rc && (cl = column(h, nh, "label")) < 0 && (cl = column(h, nh, "Quality")) < 0)
        rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: no \"label\" column in the header", path, lineno);
    /* Quoting: CSV-quoted when every field that opens with a quote is a well-formed quoted one. */
    size_t body = pos;
    int quoted = 0, n_open = 0, n_ok = 0;
    while (!rc && next_line(text, len, &pos, &line)) {
        int k = split_tabs(line.s, line.n, f, CLS_MAX_COLUMNS);
        for (int i = 0; i < k && i < CLS_MAX_COLUMNS; i++)
            if (f[i].n && f[i].s[0] == '"') n_open++, n_ok += csv_quoted(f[i]);
    }
    quoted = n_open > 0 && n_ok == n_open;
    for (pos = body; !rc && next_line(text, len, &pos, &line);) {
        lineno++;
        if (line.n == 0) continue;
        int k = split_tabs(line.s, line.n, f, CLS_MAX_COLUMNS);
        if (k != nh) {
            rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: %d fields, the header has %d", path, lineno, k, nh);
            break;
        }
        rc = recs_push(rs, field_text(f[ca], quoted), cb >= 0 ? field_text(f[cb], quoted) : NULL,
                       field_text(f[cl], quoted), lineno, err);
        if (!rc && cb >= 0 && !rs->r[rs->n - 1].b) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    free(f);
    return rc;
}

/* ---- JSONL ---- */

static int json_text(const cJSON *o, const char *key, const char *path, int line, char **out, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return peft_fail(err, PEFT_EFORMAT, "%s:%d: no \"%s\" field", path, line, key);
    if (!cJSON_IsString(v)) return peft_fail(err, PEFT_EFORMAT, "%s:%d: field \"%s\" is not a string", path, line, key);
    if (!(*out = dup_n(v->valuestring, strlen(v->valuestring)))) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    return PEFT_OK;
}

static int read_jsonl(const char *text, size_t len, const char *path, cls_recs *rs, peft_err *err) {
    size_t pos = 0;
    span line;
    int lineno = 0, rc = PEFT_OK;
    while (!rc && next_line(text, len, &pos, &line)) {
        lineno++;
        size_t i = 0;
        while (i < line.n && (line.s[i] == ' ' || line.s[i] == '\t')) i++;
        if (i == line.n) continue;
        cJSON *o;
        if ((rc = peft_json_parse_record(line.s, line.n, path, lineno, &o, err))) break;
        char *a = NULL, *b = NULL, *label = NULL;
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "label");
        double v = cJSON_IsNumber(l) ? l->valuedouble : 0;
        if (!cJSON_IsObject(o)) rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: not a JSON object", path, lineno);
        else if (cJSON_GetObjectItemCaseSensitive(o, "text_a")) {
            rc = json_text(o, "text_a", path, lineno, &a, err);
            if (!rc) rc = json_text(o, "text_b", path, lineno, &b, err);
        } else rc = json_text(o, "text", path, lineno, &a, err);
        if (rc == PEFT_OK) {
            if (!l) rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: no \"label\" field", path, lineno);
            else if (cJSON_IsString(l)) label = dup_n(l->valuestring, strlen(l->valuestring));
            else if (!cJSON_IsNumber(l) || v <= -1e9 || v >= 1e9 || v != (double)(long long)v)
                rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: field \"label\" is neither an integer class id nor a string", path, lineno);
            else if ((label = malloc(24))) snprintf(label, 24, "%lld", (long long)v);
        }
        cJSON_Delete(o);
        if (rc) free(a), free(b), free(label);
        else if (rs->n > 0 && (b != NULL) != (rs->r[0].b != NULL))
            free(a), free(b), free(label),
                rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: mixes single texts and text_a/text_b pairs", path, lineno);
        else rc = recs_push(rs, a, b, label, lineno, err);
    }
    return rc;
}

/* ---- labels ---- */

/* An integer label: decimal digits with an optional minus; 0 with *v otherwise. */
static int int_label(const char *s, long *v) {
    const char *p = s + (*s == '-');
    if (!*p || strspn(p, "0123456789") != strlen(p) || strlen(p) > 9) return 0;
    *v = strtol(s, NULL, 10);
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int resolve_labels(const cls_recs *rs, const char *path, const peft_cls_opts *o, peft_cls_dataset *ds, peft_err *err) {
    int all_int = 1;
    long v;
    for (int i = 0; i < rs->n && all_int; i++) all_int = int_label(rs->r[i].label, &v);
    if (all_int) {
        for (int i = 0; i < rs->n; i++) {
            int_label(rs->r[i].label, &v);
            if (v < -1) return peft_fail(err, PEFT_EFORMAT, "%s:%d: label %ld is negative (-1 marks an unlabelled example)", path, rs->r[i].line, v);
            if (o->n_labels > 0 && v >= o->n_labels)
                return peft_fail(err, PEFT_EFORMAT, "%s:%d: label %ld is not below --num-labels %d", path, rs->r[i].line, v, o->n_labels);
            ds->labels[i] = (int32_t)v;
            if (v + 1 > ds->n_classes) ds->n_classes = (int)v + 1;
        }
        return PEFT_OK;
    }
    /* Class names: the model's label2id order, or the sorted distinct names. */
    int n = 0;
    char **names = malloc((size_t)(o->label_names ? o->n_label_names : rs->n) * sizeof *names + 1);
    if (!names) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (o->label_names) {
        for (; n < o->n_label_names; n++) names[n] = (char *)o->label_names[n];
    } else {
        for (int i = 0; i < rs->n; i++) names[i] = rs->r[i].label;
        qsort(names, (size_t)rs->n, sizeof *names, cmp_str);
        for (int i = 0; i < rs->n; i++)
            if (!n || strcmp(names[n - 1], names[i])) names[n++] = names[i];
    }
    int rc = PEFT_OK;
    if (o->n_labels > 0 && n > o->n_labels)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: %d class names (\"%s\" ...) for --num-labels %d", path, n, names[0], o->n_labels);
    for (int i = 0; !rc && i < rs->n; i++) {
        int id = -1;
        for (int k = 0; k < n && id < 0; k++)
            if (!strcmp(names[k], rs->r[i].label)) id = k;
        if (id < 0) rc = peft_fail(err, PEFT_EFORMAT, "%s:%d: label \"%s\" is not one of the model's labels (label2id)", path, rs->r[i].line, rs->r[i].label);
        ds->labels[i] = id;
    }
    if (!rc && !(ds->classes = calloc((size_t)n + 1, sizeof *ds->classes))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int k = 0; !rc && k < n; k++)
        if (!(ds->classes[k] = dup_n(names[k], strlen(names[k])))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    ds->n_classes = n;
    free(names);
    return rc;
}

/* ---- tokens ---- */

/* The tokenizers library's truncation of the content to `room` tokens (utils/truncation.rs): a
 * single text keeps its first `room`. A pair, longest_first: with s the shorter length and l the
 * longer, the longer is cut to max(s, room - s); if that still does not fit, the shorter gets
 * room / 2 and the longer room / 2 + room % 2 (A is the shorter when they are equal). */
static void truncate_lengths(size_t *na, size_t *nb, int pair, size_t room) {
    if (!pair) {
        if (*na > room) *na = room;
        return;
    }
    if (*na + *nb <= room) return;
    int swap = *na > *nb;
    size_t s = swap ? *nb : *na, l;
    l = s > room ? s : (s > room - s ? s : room - s);
    if (s + l > room) s = room / 2, l = s + room % 2;
    size_t ta = swap ? l : s, tb = swap ? s : l;
    if (*na > ta) *na = ta;
    if (*nb > tb) *nb = tb;
}

static int tokenize(const cls_recs *rs, const char *path, const peft_tokenizer *tok, const peft_cls_opts *o,
                    peft_cls_dataset *ds, peft_err *err) {
    int pair = ds->is_pair, rc;
    size_t n_special, cap = 0;
    int32_t *ids, dummy = 0;
    uint32_t *types;
    /* the template's own tokens: the template around empty content */
    if ((rc = peft_tokenizer_post_process(tok, &dummy, 0, pair ? &dummy : NULL, 0, &ids, &types, &n_special, err))) return rc;
    free(ids), free(types);
    if (o->max_len > 0 && (size_t)o->max_len < n_special)
        return peft_fail(err, PEFT_EINVAL, "%s: max length %d is shorter than the tokenizer's %zu special tokens", path, o->max_len, n_special);
    ds->offset[0] = 0;
    for (int i = 0; i < rs->n && !rc; i++) {
        const cls_rec *r = &rs->r[i];
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0, n = 0;
        ids = NULL, types = NULL;
        rc = peft_tokenizer_encode(tok, r->a, strlen(r->a), 0, &a, &na, err);
        if (!rc && pair) rc = peft_tokenizer_encode(tok, r->b, strlen(r->b), 0, &b, &nb, err);
        if (!rc && o->max_len > 0) truncate_lengths(&na, &nb, pair, (size_t)o->max_len - n_special);
        if (!rc) rc = peft_tokenizer_post_process(tok, a, na, pair ? (b ? b : &dummy) : NULL, nb, &ids, &types, &n, err);
        if (rc) peft_err_prefix(err, "%s:%d", path, r->line);
        size_t need = (size_t)ds->offset[i] + n;
        if (!rc && need > cap) {
            size_t c = cap ? cap : 4096;
            while (c < need) c *= 2;
            int32_t *g = realloc(ds->tokens, c * sizeof *g), *h = g ? realloc(ds->type_ids, c * sizeof *h) : NULL;
            if (g) ds->tokens = g;
            if (h) ds->type_ids = h, cap = c;
            else rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        }
        for (size_t k = 0; !rc && k < n; k++) {
            ds->tokens[ds->offset[i] + k] = ids[k];
            ds->type_ids[ds->offset[i] + k] = (int32_t)types[k];
        }
        if (!rc) ds->offset[i + 1] = (int64_t)need;
        if (!rc && (int)n > ds->max_tokens) ds->max_tokens = (int)n;
        free(a), free(b), free(ids), free(types);
    }
    return rc;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

int peft_cls_load_text_memory(const char *text, size_t len, const char *name, const peft_tokenizer *tok,
                              const peft_cls_opts *opts, peft_cls_dataset **out, peft_err *err) {
    static const peft_cls_opts no_opts = {0};
    const peft_cls_opts *o = opts ? opts : &no_opts;
    *out = NULL;
    if (o->max_len < 0 || o->n_labels < 0) return peft_fail(err, PEFT_EINVAL, "%s: negative max length or number of labels", name);
    cls_recs rs = {0};
    int rc = ends_with(name, ".jsonl") || ends_with(name, ".json") ? read_jsonl(text, len, name, &rs, err)
                                                                   : read_tsv(text, len, name, &rs, err);
    if (!rc && rs.n == 0) rc = peft_fail(err, PEFT_EFORMAT, "%s: no example in the file", name);
    peft_cls_dataset *ds = rc ? NULL : calloc(1, sizeof *ds);
    if (!rc && !ds) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (!rc) {
        ds->n = rs.n;
        ds->is_pair = rs.r[0].b != NULL;
        ds->path = dup_n(name, strlen(name));
        ds->labels = malloc((size_t)rs.n * sizeof *ds->labels);
        ds->offset = malloc(((size_t)rs.n + 1) * sizeof *ds->offset);
        if (!ds->path || !ds->labels || !ds->offset) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    if (!rc) rc = resolve_labels(&rs, name, o, ds, err);
    if (!rc) rc = tokenize(&rs, name, tok, o, ds, err);
    recs_free(&rs);
    if (rc) peft_cls_free(ds);
    else *out = ds;
    return rc;
}

int peft_cls_load_text(const char *path, const peft_tokenizer *tok, const peft_cls_opts *opts, peft_cls_dataset **out,
                       peft_err *err) {
    char *text;
    size_t len;
    *out = NULL;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    rc = peft_cls_load_text_memory(text, len, path, tok, opts, out, err);
    free(text);
    return rc;
}

int peft_cls_load_images(const char *dir, const char *preprocessor_config, const peft_cls_opts *opts,
                         peft_cls_dataset **out, peft_err *err) {
    *out = NULL;
    peft_image_folder f;
    int rc = peft_image_folder_list(dir, &f, err);
    if (rc) return rc;
    peft_cls_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    else if (opts && opts->n_labels > 0 && f.n_classes > opts->n_labels)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: %d class folders for --num-labels %d", dir, f.n_classes, opts->n_labels);
    if (!rc) {
        peft_image_processor_defaults(&ds->proc);
        if (preprocessor_config) rc = peft_image_processor_load(preprocessor_config, &ds->proc, err);
    }
    if (!rc) {
        /* take the listing's strings over */
        ds->n = f.n_items;
        ds->n_classes = f.n_classes;
        ds->classes = f.classes;
        f.classes = NULL;
        f.n_classes = 0;
        ds->path = dup_n(dir, strlen(dir));
        ds->labels = malloc((size_t)f.n_items * sizeof *ds->labels);
        ds->image_paths = calloc((size_t)f.n_items + 1, sizeof *ds->image_paths);
        if (!ds->path || !ds->labels || !ds->image_paths) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        for (int i = 0; !rc && i < f.n_items; i++) {
            ds->labels[i] = f.items[i].label;
            ds->image_paths[i] = f.items[i].path;
            f.items[i].path = NULL;
        }
    }
    peft_image_folder_free(&f);
    if (rc) peft_cls_free(ds);
    else *out = ds;
    return rc;
}

uint64_t peft_cls_hash(const peft_cls_dataset *ds) {
    uint64_t h = peft_fnv1a(0xcbf29ce484222325ull, &ds->n, sizeof ds->n);
    h = peft_fnv1a(h, ds->labels, (size_t)ds->n * sizeof *ds->labels);
    if (ds->offset) {
        h = peft_fnv1a(h, ds->offset, ((size_t)ds->n + 1) * sizeof *ds->offset);
        h = peft_fnv1a(h, ds->tokens, (size_t)ds->offset[ds->n] * sizeof *ds->tokens);
        h = peft_fnv1a(h, ds->type_ids, (size_t)ds->offset[ds->n] * sizeof *ds->type_ids);
    }
    for (int i = 0; ds->image_paths && i < ds->n; i++) h = peft_fnv1a(h, ds->image_paths[i], strlen(ds->image_paths[i]) + 1);
    return h;
}

void peft_cls_free(peft_cls_dataset *ds) {
    if (!ds) return;
    for (int i = 0; ds->classes && i < ds->n_classes; i++) free(ds->classes[i]);
    for (int i = 0; ds->image_paths && i < ds->n; i++) free(ds->image_paths[i]);
    free(ds->classes), free(ds->image_paths), free(ds->path), free(ds->labels), free(ds->offset);
    free(ds->tokens), free(ds->type_ids), free(ds);
}

/* Grows *p to hold n elements of size sz (capacity in *cap). */
static int grow(void **p, size_t *cap, size_t n, size_t sz) {
    if (n <= *cap) return 0;
    void *g = realloc(*p, n * sz);
    if (!g) return -1;
    *p = g;
    *cap = n;
    return 0;
}

static int fill_pixels(const peft_cls_dataset *ds, const int *rows, int B, peft_cls_batch *bt, peft_err *err) {
    size_t per = 0;
    int h0 = 0, w0 = 0, rc = PEFT_OK;
    for (int i = 0; i < B && !rc; i++) {
        const char *path = ds->image_paths[rows[i]];
        peft_image img;
        float *px = NULL;
        int h, w;
        if ((rc = peft_image_load(path, &img, err))) break;
        rc = peft_image_preprocess(&ds->proc, &img, path, &px, &h, &w, err);
        peft_image_free(&img);
        if (!rc && i == 0) {
            h0 = h, w0 = w, per = (size_t)3 * h * w;
            if (grow((void **)&bt->pixels, &bt->cap_pixels, per * B, sizeof *bt->pixels)) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        } else if (!rc && (h != h0 || w != w0))
            rc = peft_fail(err, PEFT_EFORMAT, "%s: preprocessed to %dx%d, the batch's first image to %dx%d", path, w, h, w0, h0);
        if (!rc) memcpy(bt->pixels + per * i, px, per * sizeof *px);
        free(px);
    }
    if (!rc) bt->b.pixels = bt->pixels, bt->height = h0, bt->width = w0;
    return rc;
}

int peft_cls_batch_fill(const peft_cls_dataset *ds, const int *rows, int B, int T, int pad_id, peft_cls_batch *bt,
                        peft_err *err) {
    if (B <= 0 || T < 0) return peft_fail(err, PEFT_EINVAL, "%s: batch of %d rows of %d tokens", ds->path, B, T);
    for (int i = 0; i < B; i++)
        if (rows[i] < 0 || rows[i] >= ds->n) return peft_fail(err, PEFT_EINVAL, "%s: example %d out of range (%d examples)", ds->path, rows[i], ds->n);
    size_t rows_cap = bt->cap_rows;
    if (grow((void **)&bt->labels, &rows_cap, (size_t)B, sizeof *bt->labels) ||
        grow((void **)&bt->lengths, &bt->cap_rows, (size_t)B, sizeof *bt->lengths))
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    memset(&bt->b, 0, sizeof bt->b);
    bt->b.B = B;
    for (int i = 0; i < B; i++) bt->labels[i] = ds->labels[rows[i]];
    bt->b.targets = bt->labels;
    if (ds->image_paths) return fill_pixels(ds, rows, B, bt, err);
    if (T == 0)
        for (int i = 0; i < B; i++) {
            int n = (int)(ds->offset[rows[i] + 1] - ds->offset[rows[i]]);
            if (n > T) T = n;
        }
    size_t cap = bt->cap_tokens;
    if (grow((void **)&bt->ids, &cap, (size_t)B * T, sizeof *bt->ids) ||
        grow((void **)&bt->type_ids, &bt->cap_tokens, (size_t)B * T, sizeof *bt->type_ids))
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < B; i++) {
        int64_t o = ds->offset[rows[i]];
        int n = (int)(ds->offset[rows[i] + 1] - o);
        if (n > T) n = T;
        for (int t = 0; t < T; t++) {
            bt->ids[(size_t)i * T + t] = t < n ? ds->tokens[o + t] : pad_id;
            bt->type_ids[(size_t)i * T + t] = t < n ? ds->type_ids[o + t] : 0;
        }
        bt->lengths[i] = n;
    }
    bt->b.T = T;
    bt->b.ids = bt->ids;
    bt->b.type_ids = bt->type_ids;
    bt->b.lengths = bt->lengths;
    return PEFT_OK;
}

void peft_cls_batch_free(peft_cls_batch *bt) {
    free(bt->ids), free(bt->type_ids), free(bt->lengths), free(bt->labels), free(bt->pixels);
    memset(bt, 0, sizeof *bt);
}
