/* bench_train.c: LoRA training throughput of peft.c (issue 5).
 *
 *   build/bench_train --model DIR [--batch 4] [--seq 256] [--steps 5] [--warmup-steps 1]
 *                     [--rank 16] [--alpha 32] [--lr 1e-4] [--seed 0] [--recompute] [--bf16 | --f16]
 *                     [--peak-gflops G] [--peak-f32-gflops G] [--impl NAME]
 *
 * Trains LoRA (rank 16, alpha 32, all seven linear projections of every layer, AdamW lr 1e-4,
 * no weight decay) on random token ids (seeded) for warmup + steps updates and times the
 * `steps` after the warmup. Prints one JSON line:
 *   {"impl":"peft.c","tokens_per_s":..,"peak_rss_mb":..,"step_s":..,"mfu":..,...}
 * step_s is the mean over timed steps; tokens_per_s = batch*seq / step_s; peak_rss_mb is
 * getrusage(RUSAGE_SELF).ru_maxrss (includes the mmapped f32 checkpoint pages touched).
 * mfu = model_flops_per_step / step_s / peak (peak from --peak-gflops, else null); the
 * FLOP count is documented in bench/README.md and is the same formula as bench/hf_peer.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kernels/kernels.h"
#include "methods/adapter_set.h"
#include "models/llama.h"
#include "train/optim.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

/* Model FLOPs of one LoRA training step over B x T tokens, base weights frozen:
 *   per token: forward 2*P_lin, backward input-gradients 2*P_lin (no dW for frozen weights),
 *   LoRA 6*r*(in+out) per adapted site (forward 2, dx 2, dA+dB 2), and attention
 *   3 * 2*2*T*(NH*HD) per layer (QK^T and PV forward; backward is twice the forward),
 *   counted over the full T x T score matrix (the PaLM/nanoGPT convention; causal masking
 *   halves the useful part). Recomputation (--recompute) is not model FLOPs. */
static double model_flops_per_step(const peft_llama_config *c, int B, int T, int rank) {
    double C = c->hidden_size, F = c->intermediate_size, QD = (double)c->n_heads * c->head_dim,
           KD = (double)c->n_kv_heads * c->head_dim, L = c->n_layers, V = c->vocab_size;
    double p_layer = C * QD + 2 * C * KD + QD * C + 3 * C * F;
    double p_lin = L * p_layer + V * C; /* + lm_head (tied or not, it is a matmul) */
    double io_layer = (C + QD) + 2 * (C + KD) + (QD + C) + 2 * (C + F) + (F + C);
    double lora = 6.0 * rank * L * io_layer;
    double attn = L * 3.0 * 4.0 * T * QD;
    return (double)B * T * (4.0 * p_lin + lora + attn);
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_train --model DIR [--batch 4] [--seq 256] [--steps 5] [--warmup-steps 1] [--rank 16]\n"
            "                   [--alpha 32] [--lr 1e-4] [--seed 0] [--recompute] [--bf16|--f16] [--peak-gflops G]\n"
            "                   [--peak-f32-gflops G] [--impl NAME] [--blas-pool (OpenBLAS threads its own sgemms)]\n");
}

int main(int argc, char **argv) {
    peft_runtime_reexec(argv); // what the peft CLI does: the same OpenMP and OpenBLAS settings
    const char *model = NULL, *impl = "peft.c";
    int B = 4, T = 256, steps = 5, warmup = 1, rank = 16, recompute = 0, bf16 = 0, f16 = 0, blas_pool = 0;
    double alpha = 32, lr = 1e-4, peak = 0, peak32 = 0;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--recompute")) { recompute = 1; continue; }
        if (!strcmp(a, "--bf16")) { bf16 = 1; continue; }
        if (!strcmp(a, "--f16")) { f16 = 1; continue; }
        if (!strcmp(a, "--blas-pool")) { blas_pool = 1; continue; }
        if (!strcmp(a, "--runtime")) { /* the settings peft_runtime_reexec left this process with */
            printf("OPENBLAS_CORETYPE=%s OMP_WAIT_POLICY=%s\n", peft_blas_core(),
                   getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "");
            return 0;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        if (!v) { usage(); return 2; }
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--seq")) T = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--warmup-steps")) warmup = atoi(v);
        else if (!strcmp(a, "--rank")) rank = atoi(v);
        else if (!strcmp(a, "--alpha")) alpha = atof(v);
        else if (!strcmp(a, "--lr")) lr = atof(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--peak-gflops")) peak = atof(v);
        else if (!strcmp(a, "--peak-f32-gflops")) peak32 = atof(v);
        else if (!strcmp(a, "--impl")) impl = v;
        else { usage(); return 2; }
        i++;
    }
    if (!model || B < 1 || T < 1 || steps < 1 || warmup < 0 || rank < 1) { usage(); return 2; }
    if (!blas_pool) peft_threads_init(0); /* as the peft CLI: one OpenMP pool, OpenBLAS single-threaded */

    peft_err err = {0};
    double t_load = now_s();
    peft_llama *m;
    if (llama_load(model, &m, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }
    const peft_llama_config *c = &m->cfg;
    int N = B * T, V = c->vocab_size;

    peft_adapter_config acfg;
    peft_adapter_config_default(&acfg);
    strcpy(acfg.target_modules, "all-linear");
    acfg.opts.rank = rank;
    acfg.opts.alpha = alpha;
    acfg.opts.seed = seed;
    peft_adapter_set *set;
    if (peft_adapter_set_create(&m->base, &acfg, N, &set, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }
    if ((bf16 || f16) && llama_use_half(m, f16 ? &peft_half_f16 : &peft_half_bf16, 1, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }
    llama_acts acts;
    if (llama_acts_alloc(m, B, T, !recompute, 1, &acts, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }
    int np = peft_adapter_set_n_params(set);
    peft_named_param *params = peft_adapter_set_params(set);
    peft_adamw opt;
    if (peft_adamw_init(&opt, params, np, 0.9, 0.999, 1e-8, 0.0, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }

    int32_t *ids = malloc((size_t)(N + 1) * sizeof *ids), *tgt = malloc((size_t)N * sizeof *tgt);
    if (!ids || !tgt) { fprintf(stderr, "bench_train: out of memory\n"); return 1; }
    uint64_t s = seed * 0x2545F4914F6CDD1DULL + 1;
    t_load = now_s() - t_load;

    double t_fwd = 0, t_bwd = 0, t_opt = 0, t_min = 1e30, loss = 0, first_loss = 0;
    for (int step = 0; step < warmup + steps; step++) {
        /* a fresh random batch each step: targets are the next token of the same stream */
        for (int b = 0; b < B; b++) {
            for (int t = 0; t <= T; t++) {
                int32_t id = (int32_t)(splitmix64(&s) % (uint64_t)V);
                if (t < T) ids[b * T + t] = id;
                if (t > 0) tgt[b * T + t - 1] = id;
            }
        }
        double t0 = now_s();
        peft_adapter_set_mode(set, 1, (uint64_t)step);
        peft_adapter_set_zero_grad(set);
        int counted = 0;
        if (llama_forward(m, &acts, ids, NULL, tgt, &loss, &counted, &err)) { fprintf(stderr, "bench_train: %s\n", err.msg); return 1; }
        double t1 = now_s();
        llama_backward(m, &acts, ids, tgt, counted);
        double t2 = now_s();
        peft_adamw_step(&opt, lr);
        double t3 = now_s();
        if (step == 0) first_loss = loss;
        fprintf(stderr, "step %d%s loss %.4f  fwd %.3fs bwd %.3fs opt %.4fs total %.3fs\n", step,
                step < warmup ? " (warmup)" : "", loss, t1 - t0, t2 - t1, t3 - t2, t3 - t0);
        if (step >= warmup) {
            t_fwd += t1 - t0, t_bwd += t2 - t1, t_opt += t3 - t2;
            if (t3 - t0 < t_min) t_min = t3 - t0;
        }
    }
    double step_s = (t_fwd + t_bwd + t_opt) / steps;
    double flops = model_flops_per_step(c, B, T, rank);
    char mfu[32] = "null", mfu32[32] = "null";
    if (peak > 0) snprintf(mfu, sizeof mfu, "%.4f", flops / step_s / (peak * 1e9));
    if (peak32 > 0) snprintf(mfu32, sizeof mfu32, "%.4f", flops / step_s / (peak32 * 1e9));
    printf("{\"impl\":\"%s\",\"tokens_per_s\":%.1f,\"peak_rss_mb\":%.1f,\"step_s\":%.4f,\"mfu\":%s,"
           "\"mfu_vs_f32_peak\":%s,\"step_min_s\":%.4f,\"fwd_s\":%.4f,\"bwd_s\":%.4f,\"opt_s\":%.5f,"
           "\"model_gflops_per_step\":%.2f,\"achieved_gflops\":%.2f,\"batch\":%d,\"seq\":%d,\"steps\":%d,"
           "\"warmup_steps\":%d,\"rank\":%d,\"recompute\":%s,\"lora_params\":%zu,\"first_loss\":%.5f,"
           "\"last_loss\":%.5f,\"load_s\":%.3f,\"openblas_core\":\"%s\",\"omp_wait_policy\":\"%s\"}\n",
           impl, (double)N / step_s, peak_rss_mb(), step_s, mfu, mfu32, t_min, t_fwd / steps, t_bwd / steps,
           t_opt / steps, flops / 1e9, flops / step_s / 1e9, B, T, steps, warmup, rank, recompute ? "true" : "false",
           peft_adapter_set_numel(set), first_loss, loss, t_load, peft_blas_core(),
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "");
    free(ids), free(tgt);
    peft_adamw_free(&opt);
    llama_acts_free(&acts);
    peft_adapter_set_free(set);
    llama_free(m);
    return 0;
}
