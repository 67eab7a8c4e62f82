/* kernels_bench.c: wall-clock timings of the heavier kernels at Llama-like shapes.
 * Not part of the test suite. Build by hand, e.g.
 *   cc -O2 -march=native -fopenmp -Isrc bench/kernels_bench.c src/kernels/[a-z]*.c \
 *      $(pkg-config --cflags --libs openblas) -lm -o /tmp/kernels_bench
 * Usage: kernels_bench [T] [n_head] [n_kv_head] [hd]   (defaults: TinyLlama, T = 512) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/kernels.h"

static float *buf_(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

int main(int argc, char **argv) {
    int T = argc > 1 ? atoi(argv[1]) : 512, H = argc > 2 ? atoi(argv[2]) : 32;
    int KVH = argc > 3 ? atoi(argv[3]) : 4, hd = argc > 4 ? atoi(argv[4]) : 64, B = 1;
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KVH * hd;
    float *q = buf_(nq), *k = buf_(nk), *v = buf_(nk), *out = buf_(nq), *lse = buf_((size_t)B * H * T);
    float *dout = buf_(nq), *dq = buf_(nq), *dk = buf_(nk), *dv = buf_(nk);
    // causal attention: ~ 2 * B * H * T^2/2 * hd * 2 flops forward (QK^T and PV)
    double flops = 2.0 * B * H * (double)T * T * hd;
    attention_forward(out, lse, q, k, v, NULL, B, T, T, H, KVH, hd);  // warm-up
    int reps = 5;
    double t0 = omp_get_wtime();
    for (int r = 0; r < reps; r++) attention_forward(out, lse, q, k, v, NULL, B, T, T, H, KVH, hd);
    double tf = (omp_get_wtime() - t0) / reps;
    t0 = omp_get_wtime();
    for (int r = 0; r < reps; r++)
        attention_backward(dq, dk, dv, dout, q, k, v, out, lse, NULL, B, T, H, KVH, hd);
    double tb = (omp_get_wtime() - t0) / reps;
    printf("attention B=%d T=%d H=%d/%d hd=%d threads=%d: fwd %.2f ms (%.1f GFLOP/s), bwd %.2f ms (%.1f GFLOP/s, "
           "2.5x fwd flops)\n",
           B, T, H, KVH, hd, omp_get_max_threads(), tf * 1e3, flops / tf * 1e-9, tb * 1e3, 2.5 * flops / tb * 1e-9);

    // a q_proj-sized matmul for scale
    int C = H * hd;
    float *w = buf_((size_t)C * C), *x = buf_((size_t)T * C), *y = buf_((size_t)T * C);
    matmul_forward(y, x, w, NULL, T, C, C);
    t0 = omp_get_wtime();
    for (int r = 0; r < reps; r++) matmul_forward(y, x, w, NULL, T, C, C);
    double tm = (omp_get_wtime() - t0) / reps;
    printf("matmul %dx%d @ %dx%d^T: %.2f ms (%.1f GFLOP/s)\n", T, C, C, C, tm * 1e3, 2.0 * T * C * C / tm * 1e-9);
    return 0;
}
