/* kernels.h: the compute kernels of peft.c, as paired *_forward / *_backward functions
 * on contiguous float buffers (llm.c style). One .c file per op family in src/kernels/.
 *
 * Conventions
 *  - Shapes are given in brackets; N is the number of token rows (B*T flattened).
 *  - Weights use PyTorch's nn.Linear layout: weight[OC, C] (out features, in features).
 *  - Backward kernels ACCUMULATE (+=) into every gradient buffer they are given, so
 *    residual branches and several adapters can add into one dx. Any gradient pointer
 *    may be NULL, meaning "not needed" (frozen weight, or no input gradient): the
 *    kernel then skips that work entirely.
 *  - Kernels never allocate in the hot path unless documented; they are threaded with
 *    OpenMP (elementwise/row ops) or BLAS (matmuls). Those that allocate scratch (attention,
 *    the 16-bit matmuls) return PEFT_OK, or PEFT_ENOMEM with their outputs incomplete.
 *  - These are the CPU backend. Model code calls only these entry points, so a CUDA
 *    backend can provide the same functions over device buffers. */
#ifndef PEFT_KERNELS_H
#define PEFT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "peft.h" /* PEFT_OK / PEFT_ENOMEM: the kernels that allocate scratch return them */

/* ---- matmul.c ---------------------------------------------------------------- */
/* out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] if non-NULL). Overwrites out. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
/* dinp[N,C] += dout[N,OC] @ weight[OC,C]; dweight[OC,C] += dout^T @ inp; dbias[OC] += sum_n dout. */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC);

/* ---- rmsnorm.c --------------------------------------------------------------- */
/* out[N,C] = inp * rstd * weight, rstd[N] = 1/sqrt(mean(inp^2) + eps) (saved for backward). */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, float eps, int N, int C);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C);
/* The same with (weight + offset) in place of weight: offset 1 is Gemma's x * rstd * (1 + w)
 * (GemmaRMSNorm, in f32); dweight is the gradient with respect to weight. offset 0: exactly the above. */
void rmsnorm_offset_forward(float *out, float *rstd, const float *inp, const float *weight, float offset, float eps, int N,
                            int C);
void rmsnorm_offset_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             float offset, const float *rstd, int N, int C);

/* ---- layernorm.c ------------------------------------------------------------- */
/* out[N,C] = (inp - mean) * rstd * weight + bias (nn.LayerNorm, biased variance); weight and/or
 * bias may be NULL (1 and 0). mean[N], rstd[N] are saved for backward (NULL: not saved). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                       float eps, int N, int C);
/* dinp[N,C] +=, dweight[C] +=, dbias[C] += (each may be NULL); weight as in the forward (NULL = 1). */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C);

/* ---- rope.c ------------------------------------------------------------------ */
/* Rotary embedding in Hugging Face's rotate_half convention: for each head, the pair is
 * (x[i], x[i + head_dim/2]), i < head_dim/2, rotated by angle pos * inv_freq[i].
 * inv_freq[head_dim/2] is computed by the model from rope_theta and rope_scaling.
 * cos/sin tables: [max_pos, head_dim/2], built once by rope_build_table. */
void rope_build_table(float *cos_table, float *sin_table, const float *inv_freq, int max_pos, int half_dim);
/* x[N, n_heads*head_dim] rotated in place; pos[N] is each row's position (< max_pos). */
void rope_forward(float *x, const int32_t *pos, const float *cos_table, const float *sin_table, int N, int n_heads,
                  int head_dim);
/* dx[N, n_heads*head_dim]: in place, applies the inverse rotation (the transpose). */
void rope_backward(float *dx, const int32_t *pos, const float *cos_table, const float *sin_table, int N, int n_heads,
                   int head_dim);

/* ---- attention.c ------------------------------------------------------------- */
/* Causal grouped-query attention with packed-sequence support.
 *  q[B, Tq, n_head*hd], k,v[B, Tk, n_kv_head*hd], out[B, Tq, n_head*hd], lse[B, n_head, Tq].
 *  Query head h uses kv head h / (n_head/n_kv_head).
 *  Query row i sits at absolute index a = Tk - Tq + i of its sequence (Tq == Tk in training;
 *  Tq < Tk when decoding against a KV cache). It attends keys j in [a - pos_i, a], where
 *  pos_i = pos[b*Tq + i] is its position inside its own packed example (pos == NULL means
 *  pos_i = a: attend to everything before). Scale is 1/sqrt(hd).
 *  lse saves each row's log-sum-exp of the scaled scores so backward can recompute the
 *  probabilities without storing the T x T matrix. lse may be NULL (inference).
 *  Both are attention_*_opts with {.causal = 1, .pos = pos} (bit-identical to before the options). */
int attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                      int B, int Tq, int Tk, int n_head, int n_kv_head, int hd);
/* Training case (Tq == Tk == T). dq, dk, dv accumulate. */
int attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse, const int32_t *pos, int B, int T,
                       int n_head, int n_kv_head, int hd);

/* The general form: the same kernel with every mask kind of the encoder and decoder architectures.
 * Query row i of sequence b sits at absolute index a = Tk - Tq + i and sees exactly the keys j with
 *   causal:  j <= a                       (causal = 0: bidirectional, BERT/RoBERTa/ViT)
 *   pos:     j >= a - pos[b*Tq + i]       (packed examples; pos_i clamped to [0, a])
 *   window:  j >  a - window              (window > 0: Mistral / Gemma2 sliding window)
 *   kv_len:  j <  kv_len[b]               (key padding; a query with a >= kv_len[b] is padding
 *                                          itself: its out row is 0, its lse 0, and it passes no
 *                                          gradient to q, k or v)
 * Scores are q.k * scale (scale = 0: 1/sqrt(hd); Gemma2: query_pre_attn_scalar^-1/2), then, when
 * softcap > 0, softcap * tanh(score / softcap) (Gemma2's attn_logit_softcapping) before the
 * softmax; lse is that of the final scores. The backward needs the same opts as the forward. */
typedef struct attention_opts {
    int causal;
    const int32_t *pos;    /* [B, Tq] or NULL */
    const int32_t *kv_len; /* [B] or NULL (all Tk keys) */
    int window;            /* 0: none */
    float softcap;         /* 0: none */
    float scale;           /* 0: 1/sqrt(hd) */
} attention_opts;
int attention_forward_opts(float *out, float *lse, const float *q, const float *k, const float *v,
                           const attention_opts *opts, int B, int Tq, int Tk, int n_head, int n_kv_head, int hd);
int attention_backward_opts(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *out, const float *lse, const attention_opts *opts, int B,
                            int T, int n_head, int n_kv_head, int hd);

/* ---- swiglu.c ---------------------------------------------------------------- */
/* out[N,F] = silu(gate[N,F]) * up[N,F], silu(x) = x * sigmoid(x). */
void swiglu_forward(float *out, const float *gate, const float *up, int N, int F);
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F);

/* ---- gelu.c ------------------------------------------------------------------ */
/* kind: GELU_ERF = exact, 0.5 x (1 + erf(x/sqrt2)) (HF "gelu"); GELU_TANH = tanh approximation
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF "gelu_new", "gelu_pytorch_tanh"). */
enum { GELU_ERF = 0, GELU_TANH = 1 };
/* out[N,F] = gelu(inp[N,F]) (out may alias inp); dinp[N,F] += dout * gelu'(inp). */
void gelu_forward(float *out, const float *inp, int N, int F, int kind);
void gelu_backward(float *dinp, const float *dout, const float *inp, int N, int F, int kind);
/* GeGLU (Gemma): out[N,F] = gelu(gate[N,F]) * up[N,F]; dgate, dup accumulate (either may be NULL). */
void geglu_forward(float *out, const float *gate, const float *up, int N, int F, int kind);
void geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F,
                    int kind);

/* ---- patch_embed.c ----------------------------------------------------------- */
/* ViT patch embedding: Conv2d(Cin, C, kernel = stride = P) with bias on img[B, Cin, H, W], as
 * tokens out[B, NP, C], NP = (H/P) * (W/P) (patches row-major). weight[C, Cin, P, P] is PyTorch's
 * conv layout, bias[C] or NULL. cols[B*NP, Cin*P*P] (caller-provided) receives the im2col of the
 * image and is what the backward reads. */
void patch_embed_forward(float *out, float *cols, const float *img, const float *weight, const float *bias, int B,
                         int Cin, int H, int W, int P, int C);
/* dweight[C, Cin, P, P] +=, dbias[C] += (either may be NULL); no gradient for the image. */
void patch_embed_backward(float *dweight, float *dbias, const float *dout, const float *cols, int B, int Cin, int H,
                          int W, int P, int C);

/* ---- embedding.c ------------------------------------------------------------- */
/* out[N,C] = table[ids[n], :]. ids must be validated (< V) by the caller. */
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
/* out[N,C] += table[ids[n], :]: learned absolute positions (ids = positions) and token types,
 * added onto the token embeddings. Its backward is embedding_backward with the same ids. */
void embedding_add_forward(float *out, const int32_t *ids, const float *table, int N, int C);
/* dtable[V,C] += scatter of dout[N,C] rows at ids. */
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C);

/* ---- crossentropy.c ---------------------------------------------------------- */
/* losses[N] = -log softmax(logits[N,V])[targets[n]]; rows with targets[n] < 0 are
 * ignored (loss 0). Returns the number of counted rows. */
int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V);
/* dlogits[N,V] += scale * (softmax(logits) - onehot(target)) for counted rows.
 * dlogits may alias logits (in-place, saves an N x V buffer); then the row is overwritten
 * instead of accumulated. */
void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale, int N, int V);
/* Both in one sweep, in place: losses[n] as crossentropy_forward, then logits[N,V] overwritten
 * with scale * (softmax - onehot(target)) (zeros on ignored rows). Returns the counted rows. */
int crossentropy_fused(float *losses, float *logits, const int32_t *targets, float scale, int N, int V);
/* The same with Gemma2's final-logit soft-capping: the loss is taken on cap * tanh(logits / cap)
 * and logits[N,V] (raw on entry) are overwritten with the gradient with respect to the raw
 * logits. cap <= 0: exactly crossentropy_fused. */
int crossentropy_softcap_fused(float *losses, float *logits, const int32_t *targets, float cap, float scale, int N,
                               int V);

/* ---- elementwise.c ----------------------------------------------------------- */
/* y[n] += x[n] (residual connections). */
void add_inplace(float *y, const float *x, size_t n);
/* y[n] = a * y[n] */
void scale_inplace(float *y, float a, size_t n);
/* Soft-capping (Gemma2's final logits): out[n] = cap * tanh(inp[n] / cap), out may alias inp;
 * backward from the capped values: dinp[n] += dout[n] * (1 - (out[n] / cap)^2). */
void softcap_forward(float *out, const float *inp, float cap, size_t n);
void softcap_backward(float *dinp, const float *dout, const float *out, float cap, size_t n);
/* dst[n] = bf16(src[n]), round to nearest even (16-bit storage of saved activations); and back. */
void f32_to_bf16_array(uint16_t *dst, const float *src, size_t n);
void bf16_to_f32_array(float *dst, const uint16_t *src, size_t n);

/* ---- gemm.c ------------------------------------------------------------------ */
/* General accumulate: c[M,N] += alpha * op(a) @ op(b), op(x) = x or x^T (trans_a, trans_b);
 * a is [M,K] (or [K,M] when transposed), b is [K,N] (or [N,K]). Used where the
 * nn.Linear-shaped matmuls do not fit: adapter merges (W += s*B@A) and low-rank terms. */
void gemm_acc(float *c, const float *a, const float *b, int M, int N, int K, int trans_a, int trans_b, float alpha);

/* ---- matmul_bf16.c, matmul_f16.c: frozen weights stored once in 16 bits ------------ */
/* Dense layers over FROZEN weights packed once into a 16-bit format; activations stay f32 and
 * are rounded on the fly; the result is f32. Each format packs two layouts of the same weight
 * w[OC, C] (nn.Linear): pack_weight for forward (out = inp @ w^T), pack_weight_t for
 * backward_input (dinp += dout @ w). Sizes are in uint16_t elements; buffers may have any
 * alignment (64 bytes is best). The matmuls are threaded with OpenMP, allocate their scratch
 * per call, and must not be called inside an OpenMP parallel region.
 *
 *  bf16 (matmul_bf16.c): AVX512-BF16 vdpbf16ps, f32 accumulation. Error vs f32 ~2e-3 of the
 *    norm on random operands (8-bit mantissas). Panels of 64 output columns, reduction dim in interleaved pairs:
 *      packed[((p * Kp/2) + kp) * 128 + 2*c + t] = bf16(Bt[64p + c][2kp + t]), Kp = K rounded up to even.
 *  f16 (matmul_f16.c): AVX512-FP16 vfmadd231ph, f16 runs of 64 products summed in f32, every row
 *    and weight column scaled by a power of two into [0.5, 1). Error vs f32 ~1.2e-3 of the norm.
 *      packed[(p * K + k) * 64 + c] = f16(Bt[64p + c][k] * colscale), then 1/colscale as f32.
 *  Without the instructions both fall back to widening the same 16-bit operands and sgemm.
 * Where each is fast: bench/README.md (Zen 4/5: bf16 twice f32; Sapphire/Emerald Rapids: f16
 * twice f32, bf16 half). */
size_t bf16_packed_size(int OC, int C);   /* ceil(OC/64)*64 * (C + C%2) */
size_t bf16_packed_t_size(int OC, int C); /* ceil(C/64)*64 * (OC + OC%2) */
void bf16_pack_weight(uint16_t *packed, const float *w, int OC, int C);
void bf16_pack_weight_t(uint16_t *packed_t, const float *w, int OC, int C);
/* out[N,OC] = inp[N,C] @ w^T (+ bias[OC] if non-NULL). Overwrites out. */
int matmul_bf16_forward(float *out, const float *inp, const uint16_t *packed_w, const float *bias, int N, int C, int OC);
/* dinp[N,C] += dout[N,OC] @ w (packed_wt from bf16_pack_weight_t). */
int matmul_bf16_backward_input(float *dinp, const float *dout, const uint16_t *packed_wt, int N, int C, int OC);

size_t f16_packed_size(int OC, int C);   /* ceil(OC/64)*64 * (C + 2) */
size_t f16_packed_t_size(int OC, int C); /* ceil(C/64)*64 * (OC + 2) */
void f16_pack_weight(uint16_t *packed, const float *w, int OC, int C);
void f16_pack_weight_t(uint16_t *packed_t, const float *w, int OC, int C);
int matmul_f16_forward(float *out, const float *inp, const uint16_t *packed_w, const float *bias, int N, int C, int OC);
int matmul_f16_backward_input(float *dinp, const float *dout, const uint16_t *packed_wt, int N, int C, int OC);

/* Shared by the formats: out[N,ncol] = bias (or 0) for an empty reduction (C == 0); and the
 * sgemm their portable fallbacks run on operands they already rounded:
 * out[N,ncol] (+= when acc_mode, else = bias or 0 +) a[N,K] @ bt[ncol,K]^T. */
void matmul_fill_bias(float *out, const float *bias, int N, int ncol);
void matmul_rounded_sgemm(float *out, const float *a, const float *bt, const float *bias, int N, int K, int ncol,
                          int acc_mode);

/* One 16-bit format as a table, so model code picks a format once and calls through it. */
typedef struct peft_half_matmul {
    const char *name; /* "bf16", "f16" */
    int native;       /* 1: built with its instructions; 0: the slower sgemm fallback */
    size_t (*packed_size)(int OC, int C);
    size_t (*packed_t_size)(int OC, int C);
    void (*pack_weight)(uint16_t *packed, const float *w, int OC, int C);
    void (*pack_weight_t)(uint16_t *packed_t, const float *w, int OC, int C);
    int (*forward)(float *out, const float *inp, const uint16_t *packed_w, const float *bias, int N, int C, int OC);
    int (*backward_input)(float *dinp, const float *dout, const uint16_t *packed_wt, int N, int C, int OC);
} peft_half_matmul;
extern const peft_half_matmul peft_half_bf16, peft_half_f16;

/* ---- threads.c --------------------------------------------------------------- */
/* Opt-in single thread pool: call once at startup, before any kernel. Sets the OpenMP team to
 * nthreads (<= 0: keep OpenMP's default), OpenBLAS to 1 thread, and makes matmul_forward,
 * matmul_backward and gemm_acc split their sgemms over the OpenMP team (peft_sgemm), so OpenMP
 * workers and OpenBLAS threads no longer compete for the cores. Returns the team size. */
int peft_threads_init(int nthreads);
int peft_threads_single_pool(void); /* 1 after peft_threads_init */
/* For a program's main() only, before any other work: both libgomp and OpenBLAS read their
 * settings from the environment once, when they are loaded, so a process can only change them
 * by executing itself again. When unset, sets OMP_WAIT_POLICY=PASSIVE (spinning OpenMP workers
 * fight OpenBLAS's threads and other processes for the cores: up to 60 % of all cycles on a
 * busy 2-core machine) and, on an AVX-512 CPU for which OpenBLAS fell back to pre-AVX2 kernels,
 * OPENBLAS_CORETYPE=SkylakeX; then re-executes /proc/self/exe with argv. Returns when nothing
 * needed setting (a user's own settings are never overridden) or when exec failed. */
void peft_runtime_reexec(char **argv);
/* The name of the kernel set OpenBLAS runs ("SkylakeX", "Haswell", "Prescott", ...). */
const char *peft_blas_core(void);
/* Row-major c[M,N] = alpha * op(a) @ op(b) + beta * c (cblas_sgemm arguments). Plain cblas_sgemm
 * unless peft_threads_init was called; then split over the OpenMP team by rows (or columns) of c.
 * Must not be called inside an OpenMP parallel region (it then runs single-threaded). */
void peft_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *a, int lda, const float *b,
                int ldb, float beta, float *c, int ldc);

#endif
