/* swiglu.c: the gated MLP nonlinearity of Llama, out = silu(gate) * up, and its backward. */
#include <math.h>

#include "kernels.h"

#define EW_PAR_MIN 32768

void swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    // out (N, F), gate (N, F), up (N, F)
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float silu = g / (1.0f + expf(-g));
        out[i] = silu * up[i];
    }
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F) {
    // dgate (N, F) +=, dup (N, F) +=, dout (N, F)
    // silu'(g) = sig(g) * (1 + g * (1 - sig(g)))
    if (!dgate && !dup) return;
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        if (dup) dup[i] += dout[i] * g * sig;
    }
}
