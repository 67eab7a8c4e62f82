/* driver_logits.c: the C side of the logits parity tests (tests/hf/test_transformers_parity.py,
 * tests/hf/test_peft_*.py).
 *
 * As a driver it takes:
 *   PEFT_DRIVER_MODEL  model directory (config.json + safetensors)
 *   PEFT_DRIVER_IDS    token ids, B rows of T: a text file (one row per line, ids separated by
 *                      spaces or commas), or raw little-endian int32 when PEFT_DRIVER_T is set
 *   PEFT_DRIVER_POS    optional, same layout: each token's position inside its packed example
 *   PEFT_DRIVER_T      optional: the ids/pos files are binary int32 with rows of T
 *   PEFT_DRIVER_MODE   "forward", "decode" or "both" (default both; decode is skipped with POS)
 *   PEFT_DRIVER_CHUNK  optional prefill chunk for "prefill_logits" (default 3)
 *   PEFT_DRIVER_ADAPTER optional PEFT adapter directory, attached as `peft eval --adapter` does
 *                      (peft_adapter_set_load). With virtual tokens (prompt/prefix tuning) each
 *                      forward row is the n_virtual placeholders followed by the ids, and only
 *                      the ids' rows are written: logits are always [B, T, V] for the given ids.
 *   PEFT_DRIVER_OUT    output safetensors with F32 tensors
 *     logits          [B, T, V]  llama_forward over the whole batch (with POS when given)
 *     decode_logits   [B, T, V]  llama_decode, one token at a time, a fresh KV cache per row
 *     prefill_logits  [B, V]     llama_decode of each row in chunks of PEFT_DRIVER_CHUNK tokens:
 *                                the logits of the last token
 * Exit status: 0 on success, 1 with a message on stderr on any failure. */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "io/safetensors.h"
#include "methods/adapter_set.h"
#include "models/llama.h"

/* Parses ids from text: rows are lines; ids are separated by spaces, tabs or commas.
 * Every row must have the same length. Returns 0, or -1 with a message in err. */
static int parse_ids_text(const char *text, int32_t **out, int *B, int *T, peft_err *err) {
    size_t cap = 256, n = 0;
    int rows = 0, cols = -1, in_row = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\r') p++;
        if (*p == '\n' || *p == '\0') {
            if (in_row) {
                int len = (int)(n - (size_t)rows * (cols < 0 ? 0 : (size_t)cols));
                if (cols < 0) cols = len;
                if (len != cols) {
                    free(ids);
                    return peft_fail(err, PEFT_EFORMAT, "ids row %d has %d ids, row 0 has %d", rows, len, cols);
                }
                rows++;
                in_row = 0;
            }
            if (*p == '\0') break;
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX) {
            free(ids);
            return peft_fail(err, PEFT_EFORMAT, "ids: '%.16s' is not an integer", p);
        }
        if (n == cap) {
            int32_t *grown = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return peft_fail(err, PEFT_ENOMEM, "out of memory");
            }
            ids = grown;
        }
        ids[n++] = (int32_t)v;
        in_row = 1;
        p = end;
    }
    if (rows == 0 || cols <= 0) {
        free(ids);
        return peft_fail(err, PEFT_EFORMAT, "ids: no ids");
    }
    *out = ids;
    *B = rows;
    *T = cols;
    return 0;
}

/* Reads an ids file: text, or binary int32 (little-endian host) with rows of T when T > 0. */
static int read_ids(const char *path, int T_bin, int32_t **out, int *B, int *T, peft_err *err) {
    char *buf;
    size_t len;
    int rc = peft_read_file(path, &buf, &len, err);
    if (rc) return rc;
    if (T_bin > 0) {
        if (len == 0 || len % (4 * (size_t)T_bin)) {
            free(buf);
            return peft_fail(err, PEFT_EFORMAT, "%s: %zu bytes is not a whole number of rows of %d int32", path, len, T_bin);
        }
        *out = malloc(len);
        if (!*out) {
            free(buf);
            return peft_fail(err, PEFT_ENOMEM, "out of memory");
        }
        memcpy(*out, buf, len);
        *T = T_bin;
        *B = (int)(len / (4 * (size_t)T_bin));
    } else {
        rc = parse_ids_text(buf, out, B, T, err);
        if (rc) peft_err_prefix(err, "%s", path);
    }
    free(buf);
    return rc;
}

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

static int run_driver(const char *model_dir, const char *ids_path, const char *out_path) {
    peft_err err = {0};
    const char *pos_path = getenv("PEFT_DRIVER_POS");
    const char *mode = getenv("PEFT_DRIVER_MODE");
    if (!mode || !*mode) mode = "both";
    int do_forward = !strcmp(mode, "forward") || !strcmp(mode, "both");
    int do_decode = !strcmp(mode, "decode") || !strcmp(mode, "both");
    if (!do_forward && !do_decode) {
        fprintf(stderr, "driver: PEFT_DRIVER_MODE must be forward, decode or both (got \"%s\")\n", mode);
        return 1;
    }
    if (pos_path && *pos_path) do_decode = 0; /* decoding has no packed sequences */
    else pos_path = NULL;
    int T_bin = env_int("PEFT_DRIVER_T", 0), chunk = env_int("PEFT_DRIVER_CHUNK", 3);
    const char *adapter_dir = getenv("PEFT_DRIVER_ADAPTER");

    int32_t *ids = NULL, *pos = NULL;
    int B = 0, T = 0, rc;
    peft_llama *m = NULL;
    peft_adapter_set *set = NULL;
    int32_t *vids = NULL; /* the ids behind the virtual-token placeholders: [B, nv + T] */
    float *logits = NULL, *dec = NULL, *pre = NULL;
    llama_acts acts = {0};
    llama_kv_cache kv = {0};
    rc = read_ids(ids_path, T_bin, &ids, &B, &T, &err);
    if (rc == PEFT_OK && pos_path) {
        int pB, pT;
        rc = read_ids(pos_path, T_bin, &pos, &pB, &pT, &err);
        if (rc == PEFT_OK && (pB != B || pT != T))
            rc = peft_fail(&err, PEFT_EINVAL, "%s is [%d, %d] but the ids are [%d, %d]", pos_path, pB, pT, B, T);
    }
    if (rc == PEFT_OK) rc = llama_load(model_dir, &m, &err);
    if (rc == PEFT_OK && adapter_dir && *adapter_dir) rc = peft_adapter_set_load(adapter_dir, &m->base, 0, &set, &err);
    int V = m ? m->cfg.vocab_size : 0, nv = m ? m->base.virt.n_virtual : 0, Tv = T + nv;
    if (chunk < 1) chunk = 1;
    if (chunk > T) chunk = T;
    if (rc == PEFT_OK && nv && pos)
        rc = peft_fail(&err, PEFT_EINVAL, "PEFT_DRIVER_POS (packed rows) cannot be combined with virtual tokens");
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(set, B * Tv > chunk ? B * Tv : chunk, &err);
    size_t N = (size_t)B * T;
    if (rc == PEFT_OK && do_forward) {
        vids = malloc((size_t)B * Tv * sizeof *vids);
        logits = malloc(N * V * sizeof *logits);
        if (!vids || !logits) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
        for (int b = 0; rc == PEFT_OK && b < B; b++)
            for (int t = 0; t < Tv; t++) vids[(size_t)b * Tv + t] = t < nv ? 0 : ids[(size_t)b * T + t - nv];
        if (rc == PEFT_OK) rc = llama_acts_alloc(m, B, Tv, 0, 0, &acts, &err);
        if (rc == PEFT_OK) rc = llama_forward(m, &acts, vids, pos, NULL, NULL, NULL, &err);
        for (int b = 0; rc == PEFT_OK && b < B; b++) /* drop the virtual rows */
            memcpy(logits + (size_t)b * T * V, acts.logits + ((size_t)b * Tv + nv) * V, (size_t)T * V * sizeof *logits);
    }
    if (rc == PEFT_OK && do_decode) {
        dec = malloc(N * V * sizeof *dec);
        pre = malloc((size_t)B * V * sizeof *pre);
        if (!dec || !pre) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
        for (int b = 0; rc == PEFT_OK && b < B; b++) {
            const int32_t *row = ids + (size_t)b * T;
            /* token by token */
            rc = llama_kv_alloc(m, T, 1, &kv, &err);
            for (int t = 0; rc == PEFT_OK && t < T; t++)
                rc = llama_decode(m, &kv, row + t, 1, dec + ((size_t)b * T + t) * V, &err);
            llama_kv_free(&kv);
            /* chunked prefill */
            if (rc == PEFT_OK) rc = llama_kv_alloc(m, T, chunk, &kv, &err);
            for (int t = 0; rc == PEFT_OK && t < T; t += chunk)
                rc = llama_decode(m, &kv, row + t, T - t < chunk ? T - t : chunk, pre + (size_t)b * V, &err);
            llama_kv_free(&kv);
        }
    }
    if (rc == PEFT_OK) {
        peft_st_entry e[3];
        int n = 0;
        if (logits) e[n++] = (peft_st_entry){"logits", PEFT_F32, 3, {B, T, V}, logits};
        if (dec) e[n++] = (peft_st_entry){"decode_logits", PEFT_F32, 3, {B, T, V}, dec};
        if (pre) e[n++] = (peft_st_entry){"prefill_logits", PEFT_F32, 2, {B, V}, pre};
        const char *meta[] = {"model", model_dir, "mode", mode};
        rc = peft_st_write(out_path, e, n, meta, 2, &err);
    }
    if (rc) fprintf(stderr, "driver: error: %s\n", err.msg);
    llama_acts_free(&acts);
    free(logits);
    free(dec);
    free(pre);
    free(ids);
    free(pos);
    free(vids);
    peft_adapter_set_free(set);
    llama_free(m);
    return rc ? 1 : 0;
}

int main(void) {
    const char *model = getenv("PEFT_DRIVER_MODEL"), *ids = getenv("PEFT_DRIVER_IDS"), *out = getenv("PEFT_DRIVER_OUT");
    if (model && ids && out) return run_driver(model, ids, out);
    fprintf(stderr, "driver_logits: set all of PEFT_DRIVER_MODEL, PEFT_DRIVER_IDS and PEFT_DRIVER_OUT\n");
    return 2;
}
