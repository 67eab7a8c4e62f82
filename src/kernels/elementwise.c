/* elementwise.c: flat vector helpers (residual adds, scaling), OpenMP-threaded for big n. */
#include <string.h>

#include "kernels.h"

#define EW_PAR_MIN 32768 /* below this, a parallel region costs more than it saves */

void add_inplace(float *y, const float *x, size_t n) {
    // y (n) += x (n)
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void scale_inplace(float *y, float a, size_t n) {
    // y (n) *= a
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] *= a;
}

void f32_to_bf16_array(uint16_t *dst, const float *src, size_t n) {
    // as peft_f32_to_bf16 (core/dtype.h), written for vectorisation; NaN stays NaN
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40 : r);
    }
}

void bf16_to_f32_array(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}
