/* rope.c: rotary position embedding in Hugging Face's rotate_half convention.
 * For each head the pair (x[i], x[i + hd/2]), i < hd/2, is rotated by pos * inv_freq[i]:
 *   out[i]        = x[i] * cos - x[i+hd/2] * sin
 *   out[i + hd/2] = x[i+hd/2] * cos + x[i] * sin
 * Backward applies the transpose (rotation by -angle) to the gradient, in place. */
#include <math.h>

#include "kernels.h"

void rope_build_table(float *cos_table, float *sin_table, const float *inv_freq, int max_pos, int half_dim) {
    // cos_table, sin_table (max_pos, half_dim), inv_freq (half_dim)
    // The angle is formed in f32 like HF (position_ids.float() @ inv_freq), then cos/sin
    // are taken in double and rounded once, which matches torch's f32 cos/sin to ~1 ulp.
#pragma omp parallel for schedule(static) if ((size_t)max_pos * half_dim > 16384)
    for (int p = 0; p < max_pos; p++) {
        for (int i = 0; i < half_dim; i++) {
            float ang = (float)p * inv_freq[i];
            cos_table[(size_t)p * half_dim + i] = (float)cos((double)ang);
            sin_table[(size_t)p * half_dim + i] = (float)sin((double)ang);
        }
    }
}

/* Rotates every head of N rows by +angle (sign = 1) or -angle (sign = -1). */
static void rope_rotate_(float *x, const int32_t *pos, const float *cos_table, const float *sin_table, int N,
                         int n_heads, int head_dim, float sign) {
    int half = head_dim / 2;
    size_t row = (size_t)n_heads * head_dim;
#pragma omp parallel for schedule(static) if ((size_t)N * row > 16384)
    for (int n = 0; n < N; n++) {
        const float *cs = cos_table + (size_t)pos[n] * half;
        const float *sn = sin_table + (size_t)pos[n] * half;
        for (int h = 0; h < n_heads; h++) {
            float *x1 = x + n * row + (size_t)h * head_dim;
            float *x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float c = cs[i], s = sign * sn[i];
                float a = x1[i], b = x2[i];
                x1[i] = a * c - b * s;
                x2[i] = b * c + a * s;
            }
        }
    }
}

void rope_forward(float *x, const int32_t *pos, const float *cos_table, const float *sin_table, int N, int n_heads,
                  int head_dim) {
    // x (N, n_heads * head_dim) in place, pos (N)
    rope_rotate_(x, pos, cos_table, sin_table, N, n_heads, head_dim, 1.0f);
}

void rope_backward(float *dx, const int32_t *pos, const float *cos_table, const float *sin_table, int N, int n_heads,
                   int head_dim) {
    // dx (N, n_heads * head_dim) in place: R^T dy, i.e. rotation by -angle
    rope_rotate_(dx, pos, cos_table, sin_table, N, n_heads, head_dim, -1.0f);
}
