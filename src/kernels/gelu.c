/* gelu.c: GELU, exact and tanh-approximated, and the gated GeGLU MLP, with backward.
 *   exact (HF "gelu", BERT/ViT):  gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
 *   tanh (HF "gelu_new" GPT-2, "gelu_pytorch_tanh" Gemma):
 *                                 gelu(x) = 0.5 x (1 + tanh(k0 (x + k1 x^3))), k0 = sqrt(2/pi), k1 = 0.044715
 *   GeGLU (Gemma's MLP):          out = gelu(gate) * up
 * gelu is GeGLU with up == 1, so both run on one pair of loops (up == NULL). The tanh form uses
 * vexp.h's 16-lane tanh with AVX-512; the exact form calls libm erff (no vector erf here). */
#include <math.h>

#include "kernels.h"
#include "vexp.h"

#define EW_PAR_MIN 32768
#define EW_BLOCK 4096 /* elements per OpenMP chunk (multiple of 16) */

#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

/* gelu(x), and its derivative in *dy when dy != NULL */
static inline float gelu1_(float x, int kind, float *dy) {
    if (kind == GELU_TANH) {
        const float t = tanhf(GELU_K0 * (x + GELU_K1 * x * x * x));
        if (dy) *dy = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
        return 0.5f * x * (1.0f + t);
    }
    const float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
    if (dy) *dy = cdf + x * INV_SQRT_2PI * expf(-0.5f * x * x);  // Phi(x) + x phi(x)
    return x * cdf;
}

#ifdef __AVX512F__
/* the tanh form on 16 lanes; derivative into *dy when dy != NULL */
static inline __m512 gelu_tanh16_(__m512 x, __m512 *dy) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), k0 = _mm512_set1_ps(GELU_K0);
    const __m512 x2 = _mm512_mul_ps(x, x);
    const __m512 t = tanh512(_mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_K1), x2), x, x)));
    const __m512 h = _mm512_mul_ps(half, _mm512_add_ps(one, t));  // 0.5 (1 + t)
    if (dy) {
        const __m512 inner = _mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_set1_ps(3.0f * GELU_K1), x2, one));
        const __m512 sech2 = _mm512_fnmadd_ps(t, t, one);
        *dy = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(half, x), sech2), inner, h);
    }
    return _mm512_mul_ps(x, h);
}
#endif

/* out = gelu(gate) * (up or 1) */
static void gated_forward_(float *out, const float *gate, const float *up, size_t n, int kind) {
    const size_t nblk = (n + EW_BLOCK - 1) / EW_BLOCK;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * EW_BLOCK, end = i + EW_BLOCK < n ? i + EW_BLOCK : n;
#ifdef __AVX512F__
        if (kind == GELU_TANH)
            for (; i + 16 <= end; i += 16) {
                __m512 y = gelu_tanh16_(_mm512_loadu_ps(gate + i), NULL);
                if (up) y = _mm512_mul_ps(y, _mm512_loadu_ps(up + i));
                _mm512_storeu_ps(out + i, y);
            }
#endif
        for (; i < end; i++) out[i] = gelu1_(gate[i], kind, NULL) * (up ? up[i] : 1.0f);
    }
}

/* dgate += dout * (up or 1) * gelu'(gate), dup += dout * gelu(gate) (either may be NULL) */
static void gated_backward_(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n,
                            int kind) {
    if (!dgate && !dup) return;
    const size_t nblk = (n + EW_BLOCK - 1) / EW_BLOCK;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i = blk * EW_BLOCK, end = i + EW_BLOCK < n ? i + EW_BLOCK : n;
#ifdef __AVX512F__
        if (kind == GELU_TANH)
            for (; i + 16 <= end; i += 16) {
                __m512 d, d_out = _mm512_loadu_ps(dout + i);
                const __m512 y = gelu_tanh16_(_mm512_loadu_ps(gate + i), &d);
                if (dup) _mm512_storeu_ps(dup + i, _mm512_fmadd_ps(d_out, y, _mm512_loadu_ps(dup + i)));
                if (up) d_out = _mm512_mul_ps(d_out, _mm512_loadu_ps(up + i));
                if (dgate) _mm512_storeu_ps(dgate + i, _mm512_fmadd_ps(d_out, d, _mm512_loadu_ps(dgate + i)));
            }
#endif
        for (; i < end; i++) {
            float d;
            const float y = gelu1_(gate[i], kind, &d);
            if (dup) dup[i] += dout[i] * y;
            if (dgate) dgate[i] += dout[i] * (up ? up[i] : 1.0f) * d;
        }
    }
}

void gelu_forward(float *out, const float *inp, int N, int F, int kind) {
    // out (N, F), inp (N, F); out may alias inp
    gated_forward_(out, inp, NULL, (size_t)N * F, kind);
}

void gelu_backward(float *dinp, const float *dout, const float *inp, int N, int F, int kind) {
    // dinp (N, F) +=, dout (N, F), inp (N, F)
    gated_backward_(dinp, NULL, dout, inp, NULL, (size_t)N * F, kind);
}

void geglu_forward(float *out, const float *gate, const float *up, int N, int F, int kind) {
    // out (N, F), gate (N, F), up (N, F)
    gated_forward_(out, gate, up, (size_t)N * F, kind);
}

void geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F,
                    int kind) {
    // dgate (N, F) +=, dup (N, F) +=, dout, gate, up (N, F)
    gated_backward_(dgate, dup, dout, gate, up, (size_t)N * F, kind);
}
