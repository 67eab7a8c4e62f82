/* bench_train_parts.c: where one LoRA training step of bench_train spends its time, measured
 * kernel by kernel (src/kernels/) on the shapes of a model's config.json with random data.
 *
 *   build/bench_train_parts --config DIR/config.json [--batch 4] [--seq 256] [--rank 16] [--reps 2]
 *                           [--half bf16|f16] [--mm 1] [--mm-only 1]
 *
 * --half F: the frozen linears and the lm_head use that 16-bit format's forward / backward_input
 *           over weights packed once before timing (what `peft train --bf16/--f16` does).
 * --mm 1:   after the table, a section timing every matmul shape of the model (7 sites + lm_head,
 *           forward and dx backward) as f32 sgemm vs the --half format (default f16), alternating,
 *           best of --reps, GFLOP/s.
 * --mm-only 1: only that section.
 * --single-pool 1: call peft_threads_init(0) first (OpenBLAS single-threaded, sgemms split over
 *           the OpenMP team: one thread pool).
 *
 * Each group below is run with exactly the calls (and the count per step) that llama_forward /
 * llama_backward / lora.c make for one step over B x T tokens, best of --reps, and reported in
 * seconds per step, share of the sum, and GFLOP/s where it is a matmul. The sum approximates
 * bench_train's step_s (minus memsets, adapter bookkeeping and the optimizer, which are small).
 * Prints a table, then one JSON line {"impl":"peft.c-parts", "<group>": seconds, ...}. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/hf_config.h"
#include "kernels/kernels.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *rnd(size_t n, float sc, unsigned *seed) {
    float *p = malloc(n * sizeof *p);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        p[i] = sc * ((float)(*seed >> 8) / 16777216.0f - 0.5f);
    }
    return p;
}

enum { G_LIN_FWD, G_LIN_BWD, G_LORA_FWD, G_LORA_BWD, G_ATT_FWD, G_ATT_BWD, G_LMHEAD_FWD, G_LMHEAD_BWD, G_CE_FWD,
       G_CE_BWD, G_ELEM, NG };
static const char *gname[NG] = {"linear_fwd", "linear_bwd_dx", "lora_fwd", "lora_bwd", "attention_fwd",
                                "attention_bwd", "lm_head_fwd", "lm_head_bwd_dx", "xent_fwd", "xent_bwd",
                                "elementwise"};

int main(int argc, char **argv) {
    peft_runtime_reexec(argv); // what the peft CLI does: the same OpenMP and OpenBLAS settings
    const char *cfgpath = NULL;
    const peft_half_matmul *H = &peft_half_f16;
    int B = 4, T = 256, r = 16, reps = 2, use_half = 0, mm = 0, mm_only = 0, single_pool = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgpath = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rank")) r = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--half")) {
            use_half = 1;
            H = !strcmp(argv[i + 1], "bf16") ? &peft_half_bf16 : &peft_half_f16;
        }
        else if (!strcmp(argv[i], "--single-pool")) single_pool = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mm")) mm = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mm-only")) mm_only = mm = atoi(argv[i + 1]);
    }
    if (!cfgpath) {
        fprintf(stderr, "usage: bench_train_parts --config DIR/config.json [--batch 4] [--seq 256] [--rank 16] [--reps 2]\n");
        return 2;
    }
    if (single_pool) fprintf(stderr, "peft_threads_init: %d threads, one pool\n", peft_threads_init(0));
    peft_llama_config c;
    peft_err err = {0};
    if (peft_llama_config_load(cfgpath, &c, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    const int N = B * T, C = c.hidden_size, F = c.intermediate_size, L = c.n_layers, V = c.vocab_size, HD = c.head_dim;
    const int NH = c.n_heads, NKV = c.n_kv_heads, QD = NH * HD, KD = NKV * HD;
    /* the seven sites of a layer: in, out */
    const int site_in[7] = {C, C, C, QD, C, C, F}, site_out[7] = {QD, KD, KD, C, F, F, C};
    unsigned seed = 1;
    int maxd = F > C ? F : C;
    if (QD > maxd) maxd = QD;
    float *W[7], *A[7], *Bm[7], *dA[7], *dB[7];
    for (int s = 0; s < 7; s++) {
        W[s] = rnd((size_t)site_out[s] * site_in[s], 0.04f, &seed);
        A[s] = rnd((size_t)r * site_in[s], 0.1f, &seed);
        Bm[s] = rnd((size_t)site_out[s] * r, 0.1f, &seed);
        dA[s] = calloc((size_t)r * site_in[s], sizeof(float));
        dB[s] = calloc((size_t)site_out[s] * r, sizeof(float));
    }
    float *x = rnd((size_t)N * maxd, 1.0f, &seed), *y = rnd((size_t)N * maxd, 1.0f, &seed);
    float *dx = rnd((size_t)N * maxd, 1.0f, &seed), *ax = rnd((size_t)N * r, 1.0f, &seed), *g = rnd((size_t)N * r, 1.0f, &seed);
    float *q = rnd((size_t)N * QD, 1.0f, &seed), *k = rnd((size_t)N * KD, 1.0f, &seed), *v = rnd((size_t)N * KD, 1.0f, &seed);
    float *att = rnd((size_t)N * QD, 1.0f, &seed), *datt = rnd((size_t)N * QD, 1.0f, &seed);
    float *dq = calloc((size_t)N * QD, 4), *dk = calloc((size_t)N * KD, 4), *dv = calloc((size_t)N * KD, 4);
    float *lse = calloc((size_t)B * NH * T, 4);
    float *emb = rnd((size_t)V * C, 0.04f, &seed), *logits = malloc((size_t)N * V * sizeof(float));
    float *losses = malloc((size_t)N * 4), *rstd = malloc((size_t)N * 4), *nw = rnd((size_t)C, 1.0f, &seed);
    float *gate = rnd((size_t)N * F, 1.0f, &seed), *up = rnd((size_t)N * F, 1.0f, &seed), *act = malloc((size_t)N * F * 4);
    float *dgate = calloc((size_t)N * F, 4), *dup = calloc((size_t)N * F, 4);
    int32_t *tgt = malloc((size_t)N * 4), *pos = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tgt[i] = (int32_t)((unsigned)(i * 2654435761u) % (unsigned)V), pos[i] = i % T;
    int half = HD / 2, maxpos = T;
    float *invf = malloc((size_t)half * 4), *rc = malloc((size_t)maxpos * half * 4), *rs = malloc((size_t)maxpos * half * 4);
    for (int i = 0; i < half; i++) invf[i] = 1.0f / powf((float)c.rope_theta, (float)(2 * i) / (float)HD);
    rope_build_table(rc, rs, invf, maxpos, half);
    const float sc = 2.0f;
    /* 16-bit packed weights (both layouts), packed once */
    uint16_t *PW[8] = {0}, *PWT[8] = {0};
    double tpack = now_s();
    for (int s = 0; s < 8 && (use_half || mm); s++) {
        const int oc = s < 7 ? site_out[s] : V, ci = s < 7 ? site_in[s] : C;
        const float *w = s < 7 ? W[s] : emb;
        PW[s] = malloc(H->packed_size(oc, ci) * 2);
        PWT[s] = malloc(H->packed_t_size(oc, ci) * 2);
        H->pack_weight(PW[s], w, oc, ci);
        H->pack_weight_t(PWT[s], w, oc, ci);
    }
    tpack = now_s() - tpack;
    if (mm) fprintf(stderr, "%s packing of all weights (both layouts): %.3f s\n", H->name, tpack);
    if (mm_only) goto mm_section;

    double best[NG];
    for (int gi = 0; gi < NG; gi++) best[gi] = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t[NG] = {0}, t0;
        /* forward, layer by layer */
        for (int l = 0; l < L; l++) {
            t0 = now_s();
            for (int s = 0; s < 7; s++)
                if (use_half) H->forward(y, x, PW[s], NULL, N, site_in[s], site_out[s]);
                else matmul_forward(y, x, W[s], NULL, N, site_in[s], site_out[s]);
            t[G_LIN_FWD] += now_s() - t0;
            t0 = now_s();
            for (int s = 0; s < 7; s++) {  /* ax = x A^T; y += s * ax B^T */
                matmul_forward(ax, x, A[s], NULL, N, site_in[s], r);
                gemm_acc(y, ax, Bm[s], N, site_out[s], r, 0, 1, sc);
            }
            t[G_LORA_FWD] += now_s() - t0;
            t0 = now_s();
            attention_forward(att, lse, q, k, v, NULL, B, T, T, NH, NKV, HD);
            t[G_ATT_FWD] += now_s() - t0;
            t0 = now_s();
            rmsnorm_forward(y, rstd, x, nw, 1e-5f, N, C);
            rope_forward(q, pos, rc, rs, N, NH, HD);
            rope_forward(k, pos, rc, rs, N, NKV, HD);
            add_inplace(y, x, (size_t)N * C);
            rmsnorm_forward(y, rstd, x, nw, 1e-5f, N, C);
            swiglu_forward(act, gate, up, N, F);
            add_inplace(y, x, (size_t)N * C);
            t[G_ELEM] += now_s() - t0;
        }
        t0 = now_s();
        if (use_half) H->forward(logits, x, PW[7], NULL, N, C, V);
        else matmul_forward(logits, x, emb, NULL, N, C, V);
        t[G_LMHEAD_FWD] += now_s() - t0;
        /* keep logits moderate so exp does not overflow into special cases */
        scale_inplace(logits, 0.01f, (size_t)N * V);
        t0 = now_s();
        crossentropy_forward(losses, logits, tgt, N, V);
        t[G_CE_FWD] += now_s() - t0;
        t0 = now_s();
        crossentropy_backward(logits, logits, tgt, 1.0f / N, N, V);
        t[G_CE_BWD] += now_s() - t0;
        t0 = now_s();
        if (use_half) H->backward_input(dx, logits, PWT[7], N, C, V);
        else matmul_backward(dx, NULL, NULL, logits, x, emb, N, C, V);
        t[G_LMHEAD_BWD] += now_s() - t0;
        for (int l = 0; l < L; l++) {
            t0 = now_s();
            for (int s = 0; s < 7; s++)
                if (use_half) H->backward_input(dx, y, PWT[s], N, site_in[s], site_out[s]);
                else matmul_backward(dx, NULL, NULL, y, x, W[s], N, site_in[s], site_out[s]);
            t[G_LIN_BWD] += now_s() - t0;
            t0 = now_s();
            for (int s = 0; s < 7; s++) {  /* dB += s dy^T ax; g = s dy B; dA += g^T x; dx += g A */
                gemm_acc(dB[s], y, ax, site_out[s], r, N, 1, 0, sc);
                gemm_acc(g, y, Bm[s], N, r, site_out[s], 0, 0, sc);
                gemm_acc(dA[s], g, x, r, site_in[s], N, 1, 0, 1.0f);
                gemm_acc(dx, g, A[s], N, site_in[s], r, 0, 0, 1.0f);
            }
            t[G_LORA_BWD] += now_s() - t0;
            t0 = now_s();
            attention_backward(dq, dk, dv, datt, q, k, v, att, lse, NULL, B, T, NH, NKV, HD);
            t[G_ATT_BWD] += now_s() - t0;
            t0 = now_s();
            swiglu_backward(dgate, dup, act, gate, up, N, F);
            rmsnorm_backward(dx, NULL, y, x, nw, rstd, N, C);
            rope_backward(dq, pos, rc, rs, N, NH, HD);
            rope_backward(dk, pos, rc, rs, N, NKV, HD);
            rmsnorm_backward(dx, NULL, y, x, nw, rstd, N, C);
            t[G_ELEM] += now_s() - t0;
        }
        for (int gi = 0; gi < NG; gi++)
            if (t[gi] < best[gi]) best[gi] = t[gi];
    }
    /* flops per step of the matmul groups */
    double plin = 0, io = 0;
    for (int s = 0; s < 7; s++) plin += (double)site_in[s] * site_out[s], io += site_in[s] + site_out[s];
    double fl[NG] = {0};
    fl[G_LIN_FWD] = fl[G_LIN_BWD] = 2.0 * N * L * plin;
    fl[G_LORA_FWD] = 2.0 * N * L * r * io;
    fl[G_LORA_BWD] = 4.0 * N * L * r * io;
    fl[G_ATT_FWD] = 4.0 * N * L * (double)T * QD;  /* full T x T convention; causal does half */
    fl[G_ATT_BWD] = 2 * fl[G_ATT_FWD];
    fl[G_LMHEAD_FWD] = fl[G_LMHEAD_BWD] = 2.0 * N * (double)V * C;
    double sum = 0;
    for (int gi = 0; gi < NG; gi++) sum += best[gi];
    printf("%-16s %9s %7s %9s\n", "group", "s/step", "share", "GFLOP/s");
    for (int gi = 0; gi < NG; gi++) {
        printf("%-16s %9.4f %6.1f%%", gname[gi], best[gi], 100 * best[gi] / sum);
        if (fl[gi] > 0) printf(" %9.1f", fl[gi] / best[gi] / 1e9);
        printf("\n");
    }
    printf("%-16s %9.4f\n", "sum", sum);
    printf("{\"impl\":\"peft.c-parts%s%s\",\"batch\":%d,\"seq\":%d,\"rank\":%d", use_half ? "-" : "", use_half ? H->name : "", B, T, r);
    printf(",\"single_pool\":%d", single_pool);
    for (int gi = 0; gi < NG; gi++) printf(",\"%s\":%.5f", gname[gi], best[gi]);
    printf(",\"sum\":%.5f}\n", sum);
    if (!mm) return 0;

mm_section:
    /* every matmul shape: f32 sgemm (matmul_forward / matmul_backward dx) vs 16-bit, alternating */
    printf("\n%-22s %6s %6s %6s | %9s %6s%-3s %6s | %9s %6s%-3s %6s\n", "matmul (GFLOP/s)", "N", "C", "OC", "fwd f32",
           "fwd ", H->name, "x", "dx f32", "dx ", H->name, "x");
    {
        static const char *sname[8] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                       "lm_head"};
        for (int s = 0; s < 8; s++) {
            if (s == 2 || s == 5) continue; /* same shapes as k_proj / gate_proj */
            const int oc = s < 7 ? site_out[s] : V, ci = s < 7 ? site_in[s] : C;
            const float *w = s < 7 ? W[s] : emb;
            float *o = s < 7 ? y : logits, *gin = s < 7 ? dx : dx;
            const float *in = x;
            const float *go = s < 7 ? y : logits;
            double b[4] = {1e30, 1e30, 1e30, 1e30};
            const int inner = s < 7 ? 5 : 1;
            for (int rep = 0; rep < reps + 1; rep++) {
                double t0, dt;
                t0 = now_s();
                for (int it = 0; it < inner; it++) matmul_forward(o, in, w, NULL, N, ci, oc);
                dt = (now_s() - t0) / inner; if (rep && dt < b[0]) b[0] = dt;
                t0 = now_s();
                for (int it = 0; it < inner; it++) H->forward(o, in, PW[s], NULL, N, ci, oc);
                dt = (now_s() - t0) / inner; if (rep && dt < b[1]) b[1] = dt;
                t0 = now_s();
                for (int it = 0; it < inner; it++) matmul_backward(gin, NULL, NULL, go, in, w, N, ci, oc);
                dt = (now_s() - t0) / inner; if (rep && dt < b[2]) b[2] = dt;
                t0 = now_s();
                for (int it = 0; it < inner; it++) H->backward_input(gin, go, PWT[s], N, ci, oc);
                dt = (now_s() - t0) / inner; if (rep && dt < b[3]) b[3] = dt;
            }
            const double f = 2.0 * N * (double)ci * oc / 1e9;
            printf("%-22s %6d %6d %6d | %9.1f %9.1f %6.2f | %9.1f %9.1f %6.2f\n", sname[s], N, ci, oc, f / b[0],
                   f / b[1], b[0] / b[1], f / b[2], f / b[3], b[2] / b[3]);
        }
    }
    return 0;
}
