/* json.c: cJSON parsing with located error messages. */
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fileio.h"

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Python's json keeps the last of duplicate keys, cJSON the first: refuse them rather than
 * read a file differently from Hugging Face. Sorting keeps large objects (vocabularies) fast.
 * Returns the first duplicated key in *dup (NULL: none). */
static int find_duplicate_key(const cJSON *node, const char **dup, peft_err *err) {
    for (; node && !*dup; node = node->next) {
        if (cJSON_IsObject(node)) {
            int n = cJSON_GetArraySize(node);
            if (n > 1) {
                char **keys = malloc((size_t)n * sizeof *keys);
                if (!keys) return peft_fail(err, PEFT_ENOMEM, "out of memory");
                int k = 0;
                for (const cJSON *c = node->child; c; c = c->next) keys[k++] = c->string;
                qsort(keys, (size_t)n, sizeof *keys, cmp_str_ptr);
                for (int i = 1; i < n && !*dup; i++)
                    if (!strcmp(keys[i - 1], keys[i])) *dup = keys[i];
                free(keys);
            }
        }
        if ((cJSON_IsObject(node) || cJSON_IsArray(node)) && node->child) {
            int rc = find_duplicate_key(node->child, dup, err);
            if (rc) return rc;
        }
    }
    return PEFT_OK;
}

/* ---- locating a duplicate key in the (valid) text, for the message ---------------------- */

/* JSON's whitespace (what may follow a document) */
static size_t skip_ws(const char *s, size_t n, size_t i) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* cJSON's whitespace inside a document: every byte <= 32 (NUL and control bytes too) */
static size_t skip_cjson_ws(const char *s, size_t n, size_t i) {
    while (i < n && (unsigned char)s[i] <= 32) i++;
    return i;
}

/* i at an opening quote: the index after the closing one. */
static size_t skip_string(const char *s, size_t n, size_t i) {
    for (i++; i < n && s[i] != '"'; i++)
        if (s[i] == '\\') i++;
    return i + 1;
}

/* Scans the value at s[i] (text cJSON accepted, so nesting is bounded by its limit) and sets
 * *at to the offset of the second occurrence of key (raw bytes, klen) inside one object;
 * returns the index after the value. */
static size_t scan_value(const char *s, size_t n, size_t i, const char *key, size_t klen, size_t *at) {
    i = skip_cjson_ws(s, n, i);
    if (i >= n) return n;
    if (s[i] == '"') return skip_string(s, n, i);
    if (s[i] != '{' && s[i] != '[') { /* a number, true, false or null: at least one byte */
        do i++;
        while (i < n && (unsigned char)s[i] > 32 && !memchr(",]}", s[i], 3));
        return i;
    }
    int object = s[i] == '{', seen = 0;
    for (i++;;) {
        i = skip_cjson_ws(s, n, i);
        if (i >= n || s[i] == '}' || s[i] == ']') return i + 1;
        if (object) {
            size_t k0 = i;
            i = skip_string(s, n, i);
            if (i - k0 - 2 == klen && !memcmp(s + k0 + 1, key, klen) && ++seen == 2 && *at == (size_t)-1) *at = k0;
            i = skip_cjson_ws(s, n, i) + 1; /* the colon */
        }
        i = skip_cjson_ws(s, n, scan_value(s, n, i, key, klen, at));
        if (i < n && s[i] == ',') i++;
    }
}

/* Line and column (1-based) of byte pos of text, the text starting at line `line`. */
static void line_col(const char *text, size_t pos, int line, int *l, int *c) {
    *l = line;
    *c = 1;
    for (size_t i = 0; i < pos; i++) {
        if (text[i] == '\n') ++*l, *c = 1;
        else ++*c;
    }
}

/* Parses text[0, len) as one JSON value, strictly as Python's json does (nothing but
 * whitespace after it, no duplicate keys). located: messages say WHAT:LINE:COLUMN with the
 * text starting at `line` (JSONL records); else WHAT: ... at line L, column C. */
static int parse_strict(const char *text, size_t len, const char *what, int located, int line, cJSON **out, peft_err *err) {
    const char *end = NULL;
    int l, c;
    *out = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        /* cJSON reports where parsing stopped */
        size_t pos = end && end >= text ? (size_t)(end - text) : 0;
        line_col(text, pos > len ? len : pos, line, &l, &c);
        return located ? peft_fail(err, PEFT_EFORMAT, "%s:%d:%d: invalid JSON", what, l, c)
                       : peft_fail(err, PEFT_EFORMAT, "%s: invalid JSON at line %d, column %d", what, l, c);
    }
    size_t tail = skip_ws(text, len, (size_t)(end - text));
    if (tail < len) {
        cJSON_Delete(root);
        line_col(text, tail, line, &l, &c);
        return located ? peft_fail(err, PEFT_EFORMAT, "%s:%d:%d: unexpected characters after the JSON record (one record per line)",
                                   what, l, c)
                       : peft_fail(err, PEFT_EFORMAT, "%s: unexpected characters after the JSON document at line %d, column %d",
                                   what, l, c);
    }
    const char *dup = NULL;
    int rc = find_duplicate_key(root, &dup, err);
    if (rc == PEFT_OK && dup) {
        size_t at = (size_t)-1;
        scan_value(text, len, 0, dup, strlen(dup), &at);
        line_col(text, at == (size_t)-1 ? 0 : at, line, &l, &c); /* -1: the key is written with escapes */
        rc = located ? peft_fail(err, PEFT_EFORMAT, "%s:%d:%d: duplicate key \"%.200s\"", what, l, c, dup)
                     : peft_fail(err, PEFT_EFORMAT, "%s: duplicate key \"%.200s\" at line %d, column %d", what, dup, l, c);
    }
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    *out = root;
    return PEFT_OK;
}

int peft_json_parse(const char *text, size_t len, const char *what, cJSON **out, peft_err *err) {
    return parse_strict(text, len, what, 0, 1, out, err);
}

int peft_json_parse_record(const char *text, size_t len, const char *path, int line, cJSON **out, peft_err *err) {
    return parse_strict(text, len, path, 1, line, out, err);
}

int peft_json_load(const char *path, cJSON **out, peft_err *err) {
    char *text;
    size_t len;
    *out = NULL;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    rc = peft_json_parse(text, len, path, out, err);
    free(text);
    return rc;
}

static const cJSON *field(const cJSON *obj, const char *key, int required, const char *what, peft_err *err, int *rc) {
    *rc = PEFT_OK;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if ((!v || cJSON_IsNull(v)) && required) *rc = peft_fail(err, PEFT_EFORMAT, "%s: missing field \"%s\"", what, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

int peft_json_int(const cJSON *obj, const char *key, int required, long long *out, const char *what, peft_err *err) {
    int rc;
    const cJSON *v = field(obj, key, required, what, err, &rc);
    if (!v) return rc;
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || fabs(d) > 9.0e15)
        return peft_fail(err, PEFT_EFORMAT, "%s: field \"%s\" must be an integer", what, key);
    *out = (long long)d;
    return PEFT_OK;
}

int peft_json_double(const cJSON *obj, const char *key, int required, double *out, const char *what, peft_err *err) {
    int rc;
    const cJSON *v = field(obj, key, required, what, err, &rc);
    if (!v) return rc;
    if (!cJSON_IsNumber(v)) return peft_fail(err, PEFT_EFORMAT, "%s: field \"%s\" must be a number", what, key);
    *out = v->valuedouble;
    return PEFT_OK;
}

int peft_json_bool(const cJSON *obj, const char *key, int required, int *out, const char *what, peft_err *err) {
    int rc;
    const cJSON *v = field(obj, key, required, what, err, &rc);
    if (!v) return rc;
    if (!cJSON_IsBool(v)) return peft_fail(err, PEFT_EFORMAT, "%s: field \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(v);
    return PEFT_OK;
}

int peft_json_string(const cJSON *obj, const char *key, int required, const char **out, const char *what, peft_err *err) {
    int rc;
    const cJSON *v = field(obj, key, required, what, err, &rc);
    if (!v) return rc;
    if (!cJSON_IsString(v)) return peft_fail(err, PEFT_EFORMAT, "%s: field \"%s\" must be a string", what, key);
    *out = v->valuestring;
    return PEFT_OK;
}
