/* elementwise.c: flat vector helpers (residual adds, scaling), OpenMP-threaded for big n. */
#include "core/dtype.h"
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
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = peft_f32_to_bf16(src[i]);
}

void bf16_to_f32_array(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = peft_bf16_to_f32(src[i]);
}
