/* json.c: cJSON parsing with located error messages. */
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fileio.h"

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Python's json keeps the last of duplicate keys, cJSON the first: refuse them rather than
 * read a file differently from Hugging Face. Sorting keeps large objects (vocabularies) fast. */
static int check_duplicate_keys(const cJSON *node, const char *what, peft_err *err) {
    for (; node; node = node->next) {
        if (cJSON_IsObject(node)) {
            int n = cJSON_GetArraySize(node);
            if (n > 1) {
                char **keys = malloc((size_t)n * sizeof *keys);
                if (!keys) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
                int k = 0;
                for (const cJSON *c = node->child; c; c = c->next) keys[k++] = c->string;
                qsort(keys, (size_t)n, sizeof *keys, cmp_str_ptr);
                for (int i = 1; i < n; i++)
                    if (!strcmp(keys[i - 1], keys[i])) {
                        int rc = peft_fail(err, PEFT_EFORMAT, "%s: duplicate key \"%.200s\"", what, keys[i]);
                        free(keys);
                        return rc;
                    }
                free(keys);
            }
        }
        if ((cJSON_IsObject(node) || cJSON_IsArray(node)) && node->child) {
            int rc = check_duplicate_keys(node->child, what, err);
            if (rc) return rc;
        }
    }
    return PEFT_OK;
}

int peft_json_parse(const char *text, size_t len, const char *what, cJSON **out, peft_err *err) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        /* cJSON reports where parsing stopped; give line and column like a compiler. */
        size_t pos = end && end >= text ? (size_t)(end - text) : 0;
        if (pos > len) pos = len;
        int line = 1, col = 1;
        for (size_t i = 0; i < pos; i++) {
            if (text[i] == '\n') { line++; col = 1; } else col++;
        }
        return peft_fail(err, PEFT_EFORMAT, "%s: invalid JSON at line %d, column %d", what, line, col);
    }
    /* Like Python's json.loads, nothing but whitespace may follow the document. */
    for (const char *p = end; p && p < text + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return peft_fail(err, PEFT_EFORMAT, "%s: unexpected characters after the JSON document at byte %zu", what,
                             (size_t)(p - text));
        }
    int rc = check_duplicate_keys(root, what, err);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    *out = root;
    return PEFT_OK;
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
