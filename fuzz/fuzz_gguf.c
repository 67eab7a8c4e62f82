/* fuzz_gguf.c: libFuzzer target for the GGUF reader (peft_gguf_parse) and the tokenizer built
 * from a GGUF vocabulary (peft_gguf_tokenizer_from). Any input must give an error naming the
 * input, or a file whose tensors lie inside the input, aligned, not overlapping, with
 * numel = prod(ne) and nbytes from the type's block; every string array element and every
 * typed accessor stays inside the input. Small tensors are dequantized so that ASan sees every
 * byte they claim. Every file that parses is written back with the GGUF writer (gguf_write.h)
 * and must re-read with the same keys and tensors. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "io/gguf.h"
#include "io/gguf_write.h"
#include "tokenizer/tokenizer.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

/* Writes f back with the GGUF writer (keys as they are, tensors with their bytes) and re-reads
 * it: the same keys in order (type, count, bytes), the same tensors (name, type, shape, bytes),
 * the same alignment. The file goes to $TMPDIR (a tmpfs such as /dev/shm keeps the writer's
 * fsync cheap). The writer may refuse only what it documents: a dimension below 1. */
static void check_roundtrip(const peft_gguf_file *f) {
    char path[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/fuzz_gguf.%d.gguf", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    peft_gguf_writer w;
    peft_gguf_writer_init(&w);
    for (int i = 0; i < f->n_kv; i++) peft_gguf_add_kv(&w, &f->kv[i]);
    int zero_dim = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const peft_gguf_tensor *t = &f->tensors[i];
        for (int d = 0; d < t->ndim; d++) zero_dim |= t->ne[d] < 1;
        peft_gguf_add_tensor(&w, t->name, t->type, t->ndim, t->ne, t->data, t->nbytes);
    }
    peft_err err = {0};
    int rc = peft_gguf_write(&w, path, &err);
    peft_gguf_writer_free(&w);
    if (rc != PEFT_OK) {
        REQUIRE(zero_dim && rc < 0 && err.code == rc && strstr(err.msg, path));
        return;
    }
    peft_gguf_file *g = NULL;
    rc = peft_gguf_open(path, &g, &err);
    unlink(path);
    REQUIRE(rc == PEFT_OK && g);
    REQUIRE(g->n_kv == f->n_kv && g->n_tensors == f->n_tensors && g->alignment == f->alignment);
    for (int i = 0; i < f->n_kv; i++) {
        const peft_gguf_kv *a = &f->kv[i], *b = &g->kv[i];
        REQUIRE(!strcmp(a->key, b->key) && a->type == b->type && a->nbytes == b->nbytes);
        REQUIRE(!memcmp(a->data, b->data, a->nbytes));
        if (a->type == PEFT_GGUF_ARRAY) REQUIRE(a->arr_type == b->arr_type && a->n == b->n);
    }
    for (int i = 0; i < f->n_tensors; i++) {
        const peft_gguf_tensor *a = &f->tensors[i], *b = &g->tensors[i];
        REQUIRE(!strcmp(a->name, b->name) && a->type == b->type && a->ndim == b->ndim && a->nbytes == b->nbytes);
        REQUIRE(!memcmp(a->ne, b->ne, sizeof a->ne) && !memcmp(a->data, b->data, a->nbytes));
    }
    peft_gguf_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    unsigned char *buf = malloc(size ? size : 1); /* exactly sized: reads past the end are reported */
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    peft_err err = {0};
    peft_gguf_file *f = NULL;
    int rc = peft_gguf_parse(buf, size, "fuzz", &f, &err);
    if (rc != PEFT_OK) {
        REQUIRE(f == NULL);
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz"));
        free(buf);
        return 0;
    }
    REQUIRE(f && f->alignment && !(f->alignment & (f->alignment - 1)));
    for (int i = 0; i < f->n_kv; i++) {
        const peft_gguf_kv *kv = &f->kv[i];
        REQUIRE(kv->key && kv->key[0] && peft_gguf_find(f, kv->key) == kv);
        REQUIRE(kv->data >= buf && kv->nbytes <= (size_t)(buf + size - kv->data));
        if (kv->type == PEFT_GGUF_ARRAY && kv->arr_type == PEFT_GGUF_STRING)
            for (uint64_t j = 0; j < kv->n; j++) {
                size_t len;
                const char *s = peft_gguf_arr_str(kv, j, &len);
                REQUIRE((const unsigned char *)s >= buf && len <= (size_t)(buf + size - (const unsigned char *)s));
                volatile char sink = len ? s[len - 1] : 0;
                (void)sink;
            }
        int64_t iv;
        double dv;
        int bv;
        const char *s;
        size_t len;
        peft_err e2 = {0};
        if (peft_gguf_get_str(f, kv->key, 1, &s, &len, &e2) == PEFT_OK) REQUIRE(len <= (size_t)(buf + size - (const unsigned char *)s));
        (void)peft_gguf_get_int(f, kv->key, 1, INT64_MIN, INT64_MAX, &iv, &e2);
        (void)peft_gguf_get_float(f, kv->key, 1, &dv, &e2);
        (void)peft_gguf_get_bool(f, kv->key, 1, &bv, &e2);
    }
    for (int i = 0; i < f->n_tensors; i++) {
        const peft_gguf_tensor *t = &f->tensors[i];
        REQUIRE(peft_ggml_type_name(t->type) && t->ndim >= 1 && t->ndim <= PEFT_GGUF_MAX_DIMS);
        size_t numel = 1;
        for (int d = 0; d < PEFT_GGUF_MAX_DIMS; d++) {
            REQUIRE(t->ne[d] >= 0);
            numel *= (size_t)t->ne[d];
        }
        REQUIRE(numel == t->numel);
        REQUIRE(t->data >= buf && t->data <= buf + size && t->nbytes <= (size_t)(buf + size - t->data));
        REQUIRE(((size_t)(t->data - buf) % f->alignment) == ((size_t)(f->tensors[0].data - buf) % f->alignment));
        for (int j = 0; j < i && f->n_tensors <= 64; j++) {
            const peft_gguf_tensor *u = &f->tensors[j];
            if (t->nbytes && u->nbytes) REQUIRE(t->data + t->nbytes <= u->data || u->data + u->nbytes <= t->data);
        }
        if (t->numel && t->numel <= 4096) {
            float tmp[4096];
            peft_gguf_dequantize(t, tmp);
            volatile float sink = tmp[t->numel - 1];
            (void)sink;
        }
    }
    const peft_gguf_kv *toks = peft_gguf_find(f, "tokenizer.ggml.tokens");
    if (toks && toks->n <= 4096) {
        peft_tokenizer *tok = NULL;
        peft_err e3 = {0};
        int trc = peft_gguf_tokenizer_from(f, &tok, &e3);
        if (trc == PEFT_OK) {
            static const char text[] = " Hello  world, <s> caf\xc3\xa9 1234\n";
            int32_t *ids = NULL;
            size_t n = 0;
            if (peft_tokenizer_encode(tok, text, sizeof text - 1, 1, &ids, &n, &e3) == PEFT_OK) {
                for (size_t k = 0; k < n; k++) REQUIRE(ids[k] >= 0 && ids[k] < peft_tokenizer_vocab_size(tok));
                char *dec = NULL;
                if (peft_tokenizer_decode(tok, ids, n, 0, &dec, &e3) == PEFT_OK) REQUIRE(dec != NULL);
                free(dec);
            }
            free(ids);
            peft_tokenizer_free(tok);
        } else {
            REQUIRE(trc < 0 && tok == NULL && strstr(e3.msg, "fuzz"));
        }
    }
    check_roundtrip(f);
    peft_gguf_close(f);
    free(buf);
    return 0;
}
