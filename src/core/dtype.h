/* dtype.h: element types of stored tensors and conversions to f32.
 * Compute is f32; bf16/f16 checkpoints are widened when loaded. */
#ifndef PEFT_CORE_DTYPE_H
#define PEFT_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum peft_dtype {
    PEFT_F32 = 0,
    PEFT_BF16,
    PEFT_F16,
    PEFT_F64,
    PEFT_I64,
    PEFT_I32,
    PEFT_I16,
    PEFT_I8,
    PEFT_U8,
    PEFT_BOOL,
    PEFT_DTYPE_COUNT
} peft_dtype;

/* safetensors names ("F32", "BF16", ...) and byte sizes. */
const char *peft_dtype_name(peft_dtype t);
size_t peft_dtype_size(peft_dtype t);
/* Returns -1 for an unknown name. */
int peft_dtype_from_name(const char *name);

static inline float peft_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round-to-nearest-even, as torch does when casting f32 -> bf16. NaN stays NaN. */
static inline uint16_t peft_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float peft_f16_to_f32(uint16_t h);
uint16_t peft_f32_to_f16(float f);

/* dst[n] = (float)src[n] for a float dtype (F32, BF16, F16, F64). Returns 0, or -1 for a
 * non-float dtype. src may be unaligned (it points into a mapped file). */
int peft_convert_to_f32(float *dst, const void *src, peft_dtype t, size_t n);
/* dst (of dtype t: F32, BF16 or F16) = src[n]. Returns -1 for other dtypes. */
int peft_convert_from_f32(void *dst, const float *src, peft_dtype t, size_t n);

#endif
