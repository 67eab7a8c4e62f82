/* elementwise.c: flat vector helpers (residual adds, scaling, soft-capping), OpenMP-threaded
 * for big n. */
#include "core/dtype.h"
#include "kernels.h"
#include "vexp.h"

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

#define EW_BLOCK 4096 /* elements per OpenMP chunk (multiple of 16) */

void softcap_forward(float *out, const float *inp, float cap, size_t n) {
    // out (n) = cap * tanh(inp (n) / cap); out may alias inp
    const size_t nblk = (n + EW_BLOCK - 1) / EW_BLOCK;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t blk = 0; blk < nblk; blk++) {
        const size_t i = blk * EW_BLOCK, len = n - i < EW_BLOCK ? n - i : EW_BLOCK;
        softcap_span_(out + i, NULL, inp + i, 1.0f, cap, len);
    }
}

void softcap_backward(float *dinp, const float *dout, const float *out, float cap, size_t n) {
    // dinp (n) += dout (n) * (1 - (out / cap)^2), out (n) from softcap_forward
    if (!dinp) return;
    const float ic = 1.0f / cap;
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float t = out[i] * ic;
        dinp[i] += dout[i] * (1.0f - t * t);
    }
}
