/* dtype.c: dtype names and f32 <-> bf16/f16 conversion. */
#include "dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[PEFT_DTYPE_COUNT] = {
    [PEFT_F32] = {"F32", 4}, [PEFT_BF16] = {"BF16", 2}, [PEFT_F16] = {"F16", 2}, [PEFT_F64] = {"F64", 8},
    [PEFT_I64] = {"I64", 8}, [PEFT_I32] = {"I32", 4},   [PEFT_I16] = {"I16", 2}, [PEFT_I8] = {"I8", 1},
    [PEFT_U8] = {"U8", 1},   [PEFT_BOOL] = {"BOOL", 1},
};

const char *peft_dtype_name(peft_dtype t) { return t < PEFT_DTYPE_COUNT ? dtype_info[t].name : "?"; }
size_t peft_dtype_size(peft_dtype t) { return t < PEFT_DTYPE_COUNT ? dtype_info[t].size : 0; }

int peft_dtype_from_name(const char *name) {
    for (int t = 0; t < PEFT_DTYPE_COUNT; t++)
        if (!strcmp(name, dtype_info[t].name)) return t;
    return -1;
}

float peft_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        /* zero or subnormal: value = man * 2^-24 */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t peft_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00; /* rounds to infinity */
    if (a < 6.103515625e-05f) {              /* subnormal half: multiples of 2^-24 */
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    }
    uint32_t e = ((u >> 23) & 0xff) - 112, man = u & 0x7fffff;
    uint32_t h = (e << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* round to nearest even */
    return sign | (uint16_t)h;
}

int peft_convert_to_f32(float *dst, const void *src, peft_dtype t, size_t n) {
    const unsigned char *p = src;
    switch (t) {
    case PEFT_F32: memcpy(dst, src, n * 4); return 0;
    case PEFT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = peft_bf16_to_f32(h);
        }
        return 0;
    case PEFT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = peft_f16_to_f32(h);
        }
        return 0;
    case PEFT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default: return -1;
    }
}

int peft_convert_from_f32(void *dst, const float *src, peft_dtype t, size_t n) {
    unsigned char *p = dst;
    switch (t) {
    case PEFT_F32: memcpy(dst, src, n * 4); return 0;
    case PEFT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = peft_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return 0;
    case PEFT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = peft_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return 0;
    default: return -1;
    }
}
