/* test_safetensors.c: the safetensors writer and reader, and the bf16/f16 conversions.
 *  - round trip through peft_st_write / peft_st_open: F32, BF16, F16, I32, ranks 0 to 4, an
 *    empty tensor, metadata; header padded to 8 bytes; names sorted; duplicates refused;
 *  - conversions against known bit patterns (1.0, -2.5, 65504, subnormals, ties to even,
 *    infinities, NaN), every f16/bf16 value round-tripping, and f32 -> f16 rounding checked at
 *    every rounding boundary against the compiler's _Float16 where it has one;
 *  - a valid file truncated at EVERY byte offset is refused by peft_st_parse (each prefix is
 *    given in an exactly sized heap buffer so a sanitizer build catches any over-read);
 *  - hand-written malformed headers and the regression inputs found by fuzz/. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fileio.h"
#include "io/safetensors.h"

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- round trip ------------------------------------------------------------------ */

static void test_round_trip(const char *dir) {
    peft_err err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);

    float a[2 * 3] = {1, -2, 3.25f, 1e-30f, -1e30f, 0.5f};
    uint16_t b[4] = {0x3f80, 0xc020, 0x0001, 0x7f80};               /* bf16 bits */
    uint16_t h[2 * 2 * 2] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x8000, 0x03ff, 0x0400, 0xfc00}; /* f16 bits */
    int32_t i4[3] = {-1, 0, 2147483647};
    float scalar = 42.0f, r4[1 * 2 * 1 * 3] = {1, 2, 3, 4, 5, 6};
    peft_st_entry e[] = {
        {"z.f32", PEFT_F32, 2, {2, 3}, a},
        {"b.bf16", PEFT_BF16, 1, {4}, b},
        {"c.f16", PEFT_F16, 3, {2, 2, 2}, h},
        {"i.i32", PEFT_I32, 1, {3}, i4},
        {"s.scalar", PEFT_F32, 0, {0}, &scalar},
        {"e.empty", PEFT_F32, 2, {0, 5}, NULL},
        {"r.rank4", PEFT_F32, 4, {1, 2, 1, 3}, r4},
    };
    int n = (int)(sizeof e / sizeof e[0]);
    const char *meta[] = {"format", "pt", "note", "quote \" and \\ and \xc3\xa9"};
    int rc = peft_st_write(path, e, n, meta, 2, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;

    /* layout: u64 header length, padded so the data starts 8-byte aligned */
    char *raw;
    size_t len;
    CHECK(peft_read_file(path, &raw, &len, &err) == 0);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
    CHECK((8 + hlen) % 8 == 0);
    size_t data_bytes = sizeof a + sizeof b + sizeof h + sizeof i4 + sizeof scalar + sizeof r4;
    CHECK(len == 8 + hlen + data_bytes);
    free(raw);

    peft_st_file *f = NULL;
    rc = peft_st_open(path, &f, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    CHECK(f->n_tensors == n);
    for (int i = 1; i < f->n_tensors; i++) CHECK(strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0);
    for (int i = 0; i < n; i++) {
        const peft_st_tensor *t = peft_st_find(f, e[i].name);
        CHECK_MSG(t != NULL, "%s", e[i].name);
        if (!t) continue;
        CHECK_MSG(t->dtype == e[i].dtype && t->ndim == e[i].ndim, "%s", e[i].name);
        size_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            CHECK(t->shape[d] == e[i].shape[d]);
            numel *= (size_t)e[i].shape[d];
        }
        CHECK_MSG(t->numel == numel && t->nbytes == numel * peft_dtype_size(e[i].dtype), "%s", e[i].name);
        if (numel) CHECK_MSG(!memcmp(t->data, e[i].data, t->nbytes), "%s data", e[i].name);
    }
    CHECK(peft_st_find(f, "missing") == NULL);
    CHECK(peft_st_find(f, "") == NULL);
    CHECK(f->metadata_json && strstr(f->metadata_json, "\"format\":\"pt\""));
    CHECK(f->metadata_json && strstr(f->metadata_json, "\"note\""));

    /* the conversions read the stored bytes */
    const peft_st_tensor *tb = peft_st_find(f, "b.bf16"), *th = peft_st_find(f, "c.f16");
    float wb[4], wh[8];
    if (tb && th) {
        CHECK(peft_convert_to_f32(wb, tb->data, tb->dtype, 4) == 0);
        CHECK(wb[0] == 1.0f && wb[1] == -2.5f && wb[2] == ldexpf(1, -133) && isinf(wb[3]));
        CHECK(peft_convert_to_f32(wh, th->data, th->dtype, 8) == 0);
        CHECK(wh[0] == 1.0f && wh[1] == -2.5f && wh[2] == 65504.0f && wh[3] == ldexpf(1, -24));
        CHECK(wh[4] == 0.0f && signbit(wh[4]) && wh[5] == ldexpf(1023, -24) && wh[6] == ldexpf(1, -14) && isinf(wh[7]) && wh[7] < 0);
    }
    peft_st_close(f);

    /* duplicates are refused by the writer; the previous file is untouched */
    peft_st_entry dup[2] = {{"x", PEFT_F32, 1, {1}, a}, {"x", PEFT_F32, 1, {1}, a + 1}};
    CHECK(peft_st_write(path, dup, 2, NULL, 0, &err) == PEFT_EINVAL);
    CHECK(strstr(err.msg, "duplicate") != NULL);
    CHECK(peft_st_open(path, &f, &err) == 0);
    if (f) CHECK(f->n_tensors == n);
    peft_st_close(f);

    /* no tensors, no metadata: "{}" padded */
    CHECK(peft_st_write(path, NULL, 0, NULL, 0, &err) == 0);
    CHECK(peft_st_open(path, &f, &err) == 0);
    if (f) CHECK(f->n_tensors == 0 && f->metadata_json == NULL && peft_st_find(f, "x") == NULL);
    peft_st_close(f);
    remove(path);
}

/* ---- conversions ----------------------------------------------------------------- */

static void test_bf16(void) {
    struct { uint32_t f32; uint16_t bf16; } cases[] = {
        {0x3f800000, 0x3f80}, /* 1.0 */
        {0xc0200000, 0xc020}, /* -2.5 */
        {0x00000000, 0x0000}, {0x80000000, 0x8000},
        {0x3f808000, 0x3f80}, /* halfway, even below: stays */
        {0x3f818000, 0x3f82}, /* halfway, odd below: up to even */
        {0x3f808001, 0x3f81}, /* just above halfway */
        {0x3f807fff, 0x3f80}, /* just below halfway */
        {0x00008000, 0x0000}, /* subnormal halfway to even 0 */
        {0x00018000, 0x0002}, /* subnormal halfway, odd: up */
        {0x7f800000, 0x7f80}, {0xff800000, 0xff80}, /* infinities */
        {0x7f7fffff, 0x7f80}, /* FLT_MAX rounds to +inf, as torch does */
        {0x7f7f7fff, 0x7f7f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = peft_f32_to_bf16(bits_f32(cases[i].f32));
        CHECK_MSG(got == cases[i].bf16, "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].f32, got, cases[i].bf16);
    }
    /* NaN stays NaN (quiet), even a NaN whose payload sits only in the low 16 bits */
    uint16_t qn = peft_f32_to_bf16(bits_f32(0x7f800001));
    CHECK((qn & 0x7f80) == 0x7f80 && (qn & 0x7f) != 0);
    CHECK(isnan(peft_bf16_to_f32(peft_f32_to_bf16(NAN))));
    /* every bf16 value widens exactly and narrows back to itself; its rounding boundaries round
     * to even */
    int bad = 0;
    for (uint32_t v = 0; v < 0x10000; v++) {
        uint16_t x = (uint16_t)v;
        float f = peft_bf16_to_f32(x);
        if (f32_bits(f) != (uint32_t)x << 16) bad++;
        if ((x & 0x7f80) == 0x7f80 && (x & 0x7f)) continue; /* NaN */
        if (peft_f32_to_bf16(f) != x) bad++;
        if ((x & 0x7fff) == 0x7f7f || (x & 0x7fff) == 0x7f80) continue; /* next value is inf/NaN */
        uint32_t mid = ((uint32_t)x << 16) | 0x8000;
        uint16_t even = (x & 1) ? (uint16_t)(x + 1) : x;
        if (peft_f32_to_bf16(bits_f32(mid)) != even) bad++;
        if (peft_f32_to_bf16(bits_f32(mid - 1)) != x) bad++;
        if (peft_f32_to_bf16(bits_f32(mid + 1)) != (uint16_t)(x + 1)) bad++;
    }
    CHECK_MSG(bad == 0, "%d bf16 mismatches", bad);
}

static void test_f16(void) {
    struct { float f; uint16_t h; } cases[] = {
        {1.0f, 0x3c00}, {-2.5f, 0xc100}, {65504.0f, 0x7bff}, {-65504.0f, 0xfbff},
        {65519.0f, 0x7bff},  /* below the halfway point to 65536 */
        {65520.0f, 0x7c00},  /* halfway, rounds to even = infinity */
        {1e10f, 0x7c00}, {-INFINITY, 0xfc00}, {0.0f, 0x0000}, {-0.0f, 0x8000},
        {0x1p-14f, 0x0400},                  /* smallest normal */
        {0x1p-24f, 0x0001},                  /* smallest subnormal */
        {0x3FFp-24f, 0x03ff},                /* largest subnormal */
        {0x1p-25f, 0x0000},                  /* halfway to 0: even */
        {0x1.8p-24f, 0x0002},                /* 1.5 * 2^-24: halfway, odd: up */
        {0x1.8p-25f, 0x0001},                /* 0.75 * 2^-24 */
        {0x1p-26f, 0x0000}, {-0x1p-24f, 0x8001},
        {0x1.002p0f, 0x3c00},                /* 1 + 2^-11: halfway, even: stays */
        {0x1.006p0f, 0x3c02},                /* 1 + 3*2^-11: halfway, odd: up */
        {0x1.0022p0f, 0x3c01},                /* just above halfway */
        {0x1.ffep-15f, 0x0400},              /* subnormal that rounds up into the normals */
        {0.1f, 0x2e66}, {-3.14159265f, 0xc248},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = peft_f32_to_f16(cases[i].f);
        CHECK_MSG(got == cases[i].h, "f16(%a) = 0x%04x, want 0x%04x", (double)cases[i].f, got, cases[i].h);
    }
    CHECK((peft_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (peft_f32_to_f16(NAN) & 0x3ff));
    CHECK(isnan(peft_f16_to_f32(0x7e00)) && isnan(peft_f16_to_f32(0xfc01)));
    CHECK(peft_f16_to_f32(0x7c00) == INFINITY && peft_f16_to_f32(0xfc00) == -INFINITY);
    CHECK(peft_f16_to_f32(0x0001) == 0x1p-24f && peft_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(peft_f16_to_f32(0x8000) == 0.0f && signbit(peft_f16_to_f32(0x8000)));

    int bad = 0;
    for (uint32_t v = 0; v < 0x10000; v++) {
        uint16_t x = (uint16_t)v;
        if ((x & 0x7c00) == 0x7c00 && (x & 0x3ff)) continue; /* NaN */
        float f = peft_f16_to_f32(x);
        if (peft_f32_to_f16(f) != x) bad++;
#if defined(__FLT16_MAX__)
        _Float16 ref;
        memcpy(&ref, &x, 2);
        if (f32_bits((float)ref) != f32_bits(f)) bad++;
        /* the rounding boundaries around x: midpoint to the next value, and one f32 ulp either side */
        if ((x & 0x7fff) < 0x7c00) {
            float next = peft_f16_to_f32((uint16_t)(x + 1)), mid = (f + next) / 2; /* exact in f32 */
            float probes[3] = {mid, nextafterf(mid, 0), nextafterf(mid, INFINITY * (signbit(f) ? -1 : 1))};
            for (int p = 0; p < 3; p++) {
                _Float16 r = (_Float16)probes[p];
                uint16_t rb;
                memcpy(&rb, &r, 2);
                if (peft_f32_to_f16(probes[p]) != rb) {
                    if (bad < 5) fprintf(stderr, "f16(%a): 0x%04x vs _Float16 0x%04x\n", (double)probes[p], peft_f32_to_f16(probes[p]), rb);
                    bad++;
                }
            }
        }
#endif
    }
#if defined(__FLT16_MAX__)
    /* a sweep over the f32 bit patterns */
    for (uint64_t u = 0; u < 0x100000000ull; u += 65521) {
        float f = bits_f32((uint32_t)u);
        if (isnan(f)) continue;
        _Float16 r = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &r, 2);
        if (peft_f32_to_f16(f) != rb) bad++;
    }
#endif
    CHECK_MSG(bad == 0, "%d f16 mismatches", bad);

    /* the bulk converters, unaligned source */
    unsigned char buf[1 + 4 * 2];
    uint16_t hv[4] = {0x3c00, 0xc100, 0x7bff, 0x0001};
    memcpy(buf + 1, hv, sizeof hv);
    float out[4];
    CHECK(peft_convert_to_f32(out, buf + 1, PEFT_F16, 4) == 0);
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 65504.0f && out[3] == 0x1p-24f);
    uint16_t back[4];
    CHECK(peft_convert_from_f32(back, out, PEFT_F16, 4) == 0);
    CHECK(!memcmp(back, hv, sizeof hv));
    CHECK(peft_convert_from_f32(back, out, PEFT_BF16, 4) == 0);
    CHECK(back[0] == 0x3f80 && back[1] == 0xc020 && back[2] == 0x4780 /* 65504 rounds up to 65536 */);
    CHECK(peft_convert_to_f32(out, buf, PEFT_I32, 1) == -1);
}

/* ---- hostile input ----------------------------------------------------------------- */

static int parse_copy(const unsigned char *data, size_t n, peft_err *err) {
    unsigned char *copy = malloc(n ? n : 1); /* exactly n bytes: ASan sees any over-read */
    if (n) memcpy(copy, data, n);
    peft_st_file *f = NULL;
    int rc = peft_st_parse(copy, n, "mem", &f, err);
    if (rc == PEFT_OK && !f) rc = PEFT_EINTERNAL;
    peft_st_close(f);
    free(copy);
    return rc;
}

static void test_truncation(const char *dir) {
    peft_err err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s/tr.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {1, 2, 3};
    peft_st_entry e[] = {
        {"a", PEFT_F32, 2, {2, 3}, a}, {"b", PEFT_BF16, 1, {3}, b}, {"empty", PEFT_F16, 1, {0}, NULL},
        {"s", PEFT_F32, 0, {0}, a},
    };
    const char *meta[] = {"format", "pt"};
    CHECK(peft_st_write(path, e, 4, meta, 1, &err) == 0);
    char *raw;
    size_t len;
    if (peft_read_file(path, &raw, &len, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK(parse_copy((unsigned char *)raw, len, &err) == PEFT_OK);
    int accepted = 0, bad_code = 0;
    for (size_t n = 0; n < len; n++) {
        int rc = parse_copy((unsigned char *)raw, n, &err);
        if (rc == PEFT_OK) {
            if (accepted++ < 5) fprintf(stderr, "truncated to %zu of %zu bytes: accepted\n", n, len);
        } else if (rc != PEFT_EFORMAT) {
            bad_code++;
        } else if (!strstr(err.msg, "mem")) {
            bad_code++;
        }
    }
    CHECK_MSG(accepted == 0, "%d truncations accepted", accepted);
    CHECK_MSG(bad_code == 0, "%d truncations gave another code or an unnamed message", bad_code);

    /* single-byte corruption anywhere: an error or a valid parse, never a crash */
    for (size_t i = 0; i < len; i++) {
        unsigned char save = (unsigned char)raw[i];
        for (int k = 0; k < 3; k++) {
            static const unsigned char vals[3] = {0x00, 0xff, '9'};
            raw[i] = (char)vals[k];
            parse_copy((unsigned char *)raw, len, &err);
        }
        raw[i] = (char)save;
    }
    free(raw);
    remove(path);
}

/* A header (JSON text) + data bytes assembled in memory. */
static int parse_header(const char *json, size_t data_len, peft_err *err) {
    size_t hl = strlen(json), n = 8 + hl + data_len;
    unsigned char *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    int rc = parse_copy(buf, n, err);
    free(buf);
    return rc;
}

static void test_malformed(void) {
    peft_err err = {0};
    /* ok: 1 must parse, 0 must be refused, -1 either (never a crash) */
    struct { const char *json; size_t data; int ok; const char *needle; } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, 0, "past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12, 0, "need 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1e30,1e30]}}", 8, 0, "past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[18446744073709551617,18446744073709551625]}}", 8, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e400]}}", 8, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-0.0,8]}}", 8, 1, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 8, 0, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, 0, "overflows"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,8]}}", 8, 0, "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, NULL}, /* empty inside another: either */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0, "duplicate"},
        {"{\"a\":[]}", 0, 0, "not an object"},
        {"{\"a\":{\"dtype\":3,\"shape\":[],\"data_offsets\":[0,4]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[null,4]}}", 4, 0, NULL},
        {"{\"a\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, "unknown dtype"},
        {"{\"__metadata__\":\"x\"}", 0, 0, "__metadata__"},
        {"{\"__metadata__\":{},\"__metadata__\":{\"k\":\"v\"}}", 0, 0, "duplicate"},
        {"", 0, 0, "JSON"},
        {"[]", 0, 0, "not a JSON object"},
        {"{}", 0, 1, NULL},
        {"{}  ", 0, 1, NULL},
        {"{}x", 0, 0, "after the JSON"}, /* trailing garbage: refused, as HF does */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, 0, "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, 1, NULL},
        {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 0, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err.msg[0] = 0;
        int rc = parse_header(cases[i].json, cases[i].data, &err);
        if (cases[i].ok >= 0) CHECK_MSG((rc == PEFT_OK) == cases[i].ok, "case %zu (%s): rc %d: %s", i, cases[i].json, rc, err.msg);
        if (cases[i].needle && rc) CHECK_MSG(strstr(err.msg, cases[i].needle), "case %zu: message \"%s\"", i, err.msg);
    }
    /* header length fields that lie */
    unsigned char lie[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    CHECK(parse_copy(lie, 16, &err) == PEFT_EFORMAT);
    lie[0] = 9, memset(lie + 1, 0, 7);
    CHECK(parse_copy(lie, 16, &err) == PEFT_EFORMAT); /* "{}" + 7 zero bytes is not JSON */
    lie[0] = 2;
    CHECK(parse_copy(lie, 10, &err) == PEFT_OK);
    CHECK(parse_copy(lie, 9, &err) == PEFT_EFORMAT);
}

/* Inputs found by the fuzzers (fuzz/) that once crashed or misbehaved; hex of the whole input. */
static const char *const regressions[] = {
    "0200000000000000" "7b7d", /* placeholder: the smallest valid file */
};

static size_t from_hex(const char *hex, unsigned char **out) {
    size_t n = strlen(hex) / 2;
    *out = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        (*out)[i] = (unsigned char)v;
    }
    return n;
}

static void test_regressions(void) {
    peft_err err = {0};
    for (size_t i = 0; i < sizeof regressions / sizeof regressions[0]; i++) {
        unsigned char *buf;
        size_t n = from_hex(regressions[i], &buf);
        int rc = parse_copy(buf, n, &err);
        CHECK(rc == PEFT_OK || rc == PEFT_EFORMAT || rc == PEFT_EUNSUPPORTED);
        free(buf);
    }
}

int main(void) {
    char dir[] = "/tmp/peft_test_safetensors_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip(dir);
    test_bf16();
    test_f16();
    test_truncation(dir);
    test_malformed();
    test_regressions();
    rmdir(dir);
    return check_report("test_safetensors");
}
