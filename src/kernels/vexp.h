/* vexp.h: exp(x) and tanh(x) on 16 float lanes (AVX-512), shared by attention, SwiGLU, GELU and
 * cross-entropy.
 * Cephes expf polynomial (~1 ulp), 2^n applied with scalef; 0 for x < -104 (and -inf), inf
 * above 88.7. Without __AVX512F__ the kernels use libm expf / tanhf instead. Internal to kernels/. */
#ifndef PEFT_KERNELS_VEXP_H
#define PEFT_KERNELS_VEXP_H

#ifdef __AVX512F__
#include <immintrin.h>

static inline __attribute__((always_inline)) __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.72283905f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* tanh(x) on 16 lanes, ~1 ulp: Cephes tanhf, x + x^3 P(x^2) for |x| < 0.625 (where
 * 1 - 2/(e^2x + 1) would cancel), else 1 - 2/(exp(2|x|) + 1) with the sign of x. Used by the
 * soft-capping (attention, logits) and the tanh GELU. */
static inline __attribute__((always_inline)) __m512 tanh512(__m512 x) {
    const __m512 ax = _mm512_abs_ps(x), one = _mm512_set1_ps(1.0f);
    __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f),
                                                  _mm512_add_ps(exp512(_mm512_add_ps(ax, ax)), one)));
    const __m512i sign = _mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    big = _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(big), sign));
    const __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745E-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954E-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531E-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036E-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422E-1f));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ), big, small);
}
#endif

#include <math.h>
#include <stddef.h>

/* Soft-capping of n values (Gemma2's attention scores and final logits):
 *   t = tanh(x * pre / cap),  y = cap * t,  g = d y / d x = pre * (1 - t^2) (when g != NULL).
 * y may alias x. */
static inline void softcap_span_(float *y, float *g, const float *x, float pre, float cap, size_t n) {
    const float a = pre / cap;
    size_t i = 0;
#ifdef __AVX512F__
    const __m512 va = _mm512_set1_ps(a), vc = _mm512_set1_ps(cap), vp = _mm512_set1_ps(pre);
    for (; i + 16 <= n; i += 16) {
        const __m512 t = tanh512(_mm512_mul_ps(_mm512_loadu_ps(x + i), va));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(vc, t));
        if (g) _mm512_storeu_ps(g + i, _mm512_mul_ps(vp, _mm512_fnmadd_ps(t, t, _mm512_set1_ps(1.0f))));
    }
#endif
    for (; i < n; i++) {
        const float t = tanhf(x[i] * a);
        y[i] = cap * t;
        if (g) g[i] = pre * (1.0f - t * t);
    }
}

#endif
