/* driver_kernels.c: the C side of tests/kernels/test_kernels_torch.py (PyTorch parity).
 *
 * With PEFT_KERNEL_DUMP_IN and PEFT_KERNEL_DUMP_OUT set, it reads one kernel case written
 * by the Python test, runs the forward kernel and then the backward kernel (gradients start
 * at zero) and writes every result.
 *
 * File format, little-endian:
 *   in:  int32 magic 'PKD1', int32 op, int32 iparam[8], float fparam[2], int32 ntensors,
 *        then per tensor: int32 dtype (0 = f32, 1 = i32), int64 count, count * 4 bytes
 *   out: int32 ntensors, then the tensors in the same encoding
 * Ops and their tensors (see the Python side for the exact shapes):
 *   1 matmul      i: N C OC has_bias        in: inp w [bias] dout   out: out dinp dw [dbias]
 *   2 rmsnorm     i: N C      f: eps        in: x w dout            out: out rstd dx dw
 *   3 rope        i: N H hd max_pos         in: x pos inv_freq dout out: out dx
 *   4 attention   i: B Tq Tk H KVH hd has_pos  in: q k v [pos] dout out: out lse [dq dk dv if Tq==Tk]
 *                 (the causal attention_forward / attention_backward wrappers)
 *   5 swiglu      i: N F                    in: gate up dout        out: out dgate dup
 *   6 embedding   i: N C V                  in: ids table dout      out: out dtable
 *   7 crossentropy i: N V     f: scale      in: logits targets      out: losses count dlogits dlogits_inplace
 *   8 layernorm   i: N C has_w has_b  f: eps   in: x [w] [b] dout   out: out mean rstd dx [dw] [db]
 *   9 gelu/geglu  i: N F kind gated         in: gate [up] dout      out: out dgate [dup]
 *  10 attention_opts i: B Tq Tk H KVH hd causal window  f: softcap scale
 *                 in: q k v pos kv_len dout (pos, kv_len: 0 elements = NULL)
 *                 out: out lse [dq dk dv if Tq==Tk]
 *  11 patch_embed i: B Cin H W P C has_bias in: img w [bias] dout   out: out dw [dbias]
 *  12 positions   i: N C V                  in: base ids table dout out: base + table[ids], dtable
 *  13 softcap     i: n        f: cap        in: x dout              out: out dx
 *  14 crossentropy_softcap_fused i: N V  f: cap scale  in: logits targets  out: losses count dlogits */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#define DUMP_MAGIC 0x31444B50 /* "PKD1" */
#define DUMP_MAX_TENSORS 16

typedef struct {
    int32_t dtype;
    int64_t count;
    void *data;
} Tensor;

static void die_(const char *msg) {
    fprintf(stderr, "driver_kernels: %s\n", msg);
    exit(1);
}

static void read_exact_(FILE *f, void *p, size_t n) {
    if (fread(p, 1, n, f) != n) die_("input file truncated");
}

static void write_tensor_(FILE *f, int32_t dtype, const void *data, int64_t count) {
    fwrite(&dtype, 4, 1, f);
    fwrite(&count, 8, 1, f);
    fwrite(data, 4, (size_t)count, f);
}

static float *zeros_(int64_t n) {
    float *p = calloc((size_t)n + 1, sizeof(float));
    if (!p) die_("out of memory");
    return p;
}

int main(void) {
    const char *in_path = getenv("PEFT_KERNEL_DUMP_IN"), *out_path = getenv("PEFT_KERNEL_DUMP_OUT");
    if (!in_path || !out_path) die_("set PEFT_KERNEL_DUMP_IN and PEFT_KERNEL_DUMP_OUT");

    FILE *f = fopen(in_path, "rb");
    if (!f) die_("cannot open PEFT_KERNEL_DUMP_IN");
    int32_t magic, op, ip[8], nt;
    float fp[2];
    read_exact_(f, &magic, 4);
    if (magic != DUMP_MAGIC) die_("bad magic");
    read_exact_(f, &op, 4);
    read_exact_(f, ip, sizeof ip);
    read_exact_(f, fp, sizeof fp);
    read_exact_(f, &nt, 4);
    if (nt < 0 || nt > DUMP_MAX_TENSORS) die_("bad tensor count");
    Tensor t[DUMP_MAX_TENSORS];
    for (int i = 0; i < nt; i++) {
        read_exact_(f, &t[i].dtype, 4);
        read_exact_(f, &t[i].count, 8);
        if (t[i].count < 0 || t[i].count > ((int64_t)1 << 30)) die_("bad tensor size");
        t[i].data = malloc((size_t)t[i].count * 4 + 4);
        read_exact_(f, t[i].data, (size_t)t[i].count * 4);
    }
    fclose(f);

    FILE *o = fopen(out_path, "wb");
    if (!o) die_("cannot open PEFT_KERNEL_DUMP_OUT");
    int32_t nout = 0;
    fwrite(&nout, 4, 1, o);  // patched at the end
#define F32(i) ((float *)t[i].data)
#define I32(i) ((int32_t *)t[i].data)
#define EMIT(p, n) (write_tensor_(o, 0, (p), (n)), nout++)

    switch (op) {
    case 1: {  // matmul
        int N = ip[0], C = ip[1], OC = ip[2], hb = ip[3];
        const float *inp = F32(0), *w = F32(1), *bias = hb ? F32(2) : NULL, *dout = F32(hb ? 3 : 2);
        float *out = zeros_((int64_t)N * OC), *di = zeros_((int64_t)N * C), *dw = zeros_((int64_t)OC * C);
        float *db = zeros_(OC);
        matmul_forward(out, inp, w, bias, N, C, OC);
        matmul_backward(di, dw, hb ? db : NULL, dout, inp, w, N, C, OC);
        EMIT(out, (int64_t)N * OC);
        EMIT(di, (int64_t)N * C);
        EMIT(dw, (int64_t)OC * C);
        if (hb) EMIT(db, OC);
        free(out), free(di), free(dw), free(db);
        break;
    }
    case 2: {  // rmsnorm
        int N = ip[0], C = ip[1];
        float *out = zeros_((int64_t)N * C), *rstd = zeros_(N), *dx = zeros_((int64_t)N * C), *dw = zeros_(C);
        rmsnorm_forward(out, rstd, F32(0), F32(1), fp[0], N, C);
        rmsnorm_backward(dx, dw, F32(2), F32(0), F32(1), rstd, N, C);
        EMIT(out, (int64_t)N * C);
        EMIT(rstd, N);
        EMIT(dx, (int64_t)N * C);
        EMIT(dw, C);
        free(out), free(rstd), free(dx), free(dw);
        break;
    }
    case 3: {  // rope
        int N = ip[0], H = ip[1], hd = ip[2], max_pos = ip[3];
        int64_t n = (int64_t)N * H * hd;
        float *cs = zeros_((int64_t)max_pos * hd / 2), *sn = zeros_((int64_t)max_pos * hd / 2);
        rope_build_table(cs, sn, F32(2), max_pos, hd / 2);
        rope_forward(F32(0), I32(1), cs, sn, N, H, hd);
        rope_backward(F32(3), I32(1), cs, sn, N, H, hd);
        EMIT(F32(0), n);
        EMIT(F32(3), n);
        free(cs), free(sn);
        break;
    }
    case 5: {  // swiglu
        int N = ip[0], F = ip[1];
        int64_t n = (int64_t)N * F;
        float *out = zeros_(n), *dg = zeros_(n), *du = zeros_(n);
        swiglu_forward(out, F32(0), F32(1), N, F);
        swiglu_backward(dg, du, F32(2), F32(0), F32(1), N, F);
        EMIT(out, n);
        EMIT(dg, n);
        EMIT(du, n);
        free(out), free(dg), free(du);
        break;
    }
    case 6: {  // embedding
        int N = ip[0], C = ip[1], V = ip[2];
        float *out = zeros_((int64_t)N * C), *dt = zeros_((int64_t)V * C);
        embedding_forward(out, I32(0), F32(1), N, C);
        embedding_backward(dt, F32(2), I32(0), N, C);
        EMIT(out, (int64_t)N * C);
        EMIT(dt, (int64_t)V * C);
        free(out), free(dt);
        break;
    }
    case 7: {  // crossentropy
        int N = ip[0], V = ip[1];
        int64_t n = (int64_t)N * V;
        float *losses = zeros_(N), *d = zeros_(n);
        int count = crossentropy_forward(losses, F32(0), I32(1), N, V);
        float fcount = (float)count;
        crossentropy_backward(d, F32(0), I32(1), fp[0], N, V);
        EMIT(losses, N);
        EMIT(&fcount, 1);
        EMIT(d, n);
        crossentropy_backward(F32(0), F32(0), I32(1), fp[0], N, V);  // in place
        EMIT(F32(0), n);
        free(losses), free(d);
        break;
    }
    case 8: {  // layernorm
        int N = ip[0], C = ip[1], hw = ip[2], hb = ip[3];
        const float *x = F32(0), *w = hw ? F32(1) : NULL, *b = hb ? F32(1 + hw) : NULL, *dout = F32(1 + hw + hb);
        float *out = zeros_((int64_t)N * C), *mean = zeros_(N), *rstd = zeros_(N), *dx = zeros_((int64_t)N * C);
        float *dw = zeros_(C), *db = zeros_(C);
        layernorm_forward(out, mean, rstd, x, w, b, fp[0], N, C);
        layernorm_backward(dx, hw ? dw : NULL, hb ? db : NULL, dout, x, w, mean, rstd, N, C);
        EMIT(out, (int64_t)N * C);
        EMIT(mean, N);
        EMIT(rstd, N);
        EMIT(dx, (int64_t)N * C);
        if (hw) EMIT(dw, C);
        if (hb) EMIT(db, C);
        free(out), free(mean), free(rstd), free(dx), free(dw), free(db);
        break;
    }
    case 9: {  // gelu (gated = 0) or geglu
        int N = ip[0], F = ip[1], kind = ip[2], gated = ip[3];
        int64_t n = (int64_t)N * F;
        float *out = zeros_(n), *dg = zeros_(n), *du = zeros_(n);
        if (gated) {
            geglu_forward(out, F32(0), F32(1), N, F, kind);
            geglu_backward(dg, du, F32(2), F32(0), F32(1), N, F, kind);
        } else {
            gelu_forward(out, F32(0), N, F, kind);
            gelu_backward(dg, F32(1), F32(0), N, F, kind);
        }
        EMIT(out, n);
        EMIT(dg, n);
        if (gated) EMIT(du, n);
        free(out), free(dg), free(du);
        break;
    }
    case 4:     // attention through the causal wrappers llama.c calls
    case 10: {  // attention with options
        int B = ip[0], Tq = ip[1], Tk = ip[2], H = ip[3], KVH = ip[4], hd = ip[5], legacy = op == 4;
        attention_opts opts = {.causal = 1, .pos = ip[6] ? I32(3) : NULL};
        const float *dout = F32(ip[6] ? 4 : 3);
        if (!legacy) {
            opts = (attention_opts){.causal = ip[6],
                                    .window = ip[7],
                                    .pos = t[3].count ? I32(3) : NULL,
                                    .kv_len = t[4].count ? I32(4) : NULL,
                                    .softcap = fp[0],
                                    .scale = fp[1]};
            dout = F32(5);
        }
        int64_t nq = (int64_t)B * Tq * H * hd, nk = (int64_t)B * Tk * KVH * hd;
        float *out = zeros_(nq), *lse = zeros_((int64_t)B * H * Tq);
        int rc = legacy ? attention_forward(out, lse, F32(0), F32(1), F32(2), opts.pos, B, Tq, Tk, H, KVH, hd)
                        : attention_forward_opts(out, lse, F32(0), F32(1), F32(2), &opts, B, Tq, Tk, H, KVH, hd);
        if (rc) die_("out of memory");
        EMIT(out, nq);
        EMIT(lse, (int64_t)B * H * Tq);
        if (Tq == Tk) {
            float *dq = zeros_(nq), *dk = zeros_(nk), *dv = zeros_(nk);
            rc = legacy ? attention_backward(dq, dk, dv, dout, F32(0), F32(1), F32(2), out, lse, opts.pos, B, Tq, H,
                                             KVH, hd)
                        : attention_backward_opts(dq, dk, dv, dout, F32(0), F32(1), F32(2), out, lse, &opts, B, Tq,
                                                  H, KVH, hd);
            if (rc) die_("out of memory");
            EMIT(dq, nq);
            EMIT(dk, nk);
            EMIT(dv, nk);
            free(dq), free(dk), free(dv);
        }
        free(out), free(lse);
        break;
    }
    case 11: {  // patch embedding
        int B = ip[0], Cin = ip[1], H = ip[2], W = ip[3], P = ip[4], C = ip[5], hb = ip[6];
        int64_t np = (int64_t)(H / P) * (W / P), K = (int64_t)Cin * P * P;
        float *out = zeros_(B * np * C), *cols = zeros_(B * np * K), *dw = zeros_(C * K), *db = zeros_(C);
        patch_embed_forward(out, cols, F32(0), F32(1), hb ? F32(2) : NULL, B, Cin, H, W, P, C);
        patch_embed_backward(dw, hb ? db : NULL, F32(hb ? 3 : 2), cols, B, Cin, H, W, P, C);
        EMIT(out, B * np * C);
        EMIT(dw, C * K);
        if (hb) EMIT(db, C);
        free(out), free(cols), free(dw), free(db);
        break;
    }
    case 12: {  // learned absolute positions
        int N = ip[0], C = ip[1], V = ip[2];
        float *dt = zeros_((int64_t)V * C);
        embedding_add_forward(F32(0), I32(1), F32(2), N, C);
        embedding_backward(dt, F32(3), I32(1), N, C);
        EMIT(F32(0), (int64_t)N * C);
        EMIT(dt, (int64_t)V * C);
        free(dt);
        break;
    }
    case 13: {  // soft-capping
        int64_t n = ip[0];
        float *out = zeros_(n), *dx = zeros_(n);
        softcap_forward(out, F32(0), fp[0], (size_t)n);
        softcap_backward(dx, F32(1), out, fp[0], (size_t)n);
        EMIT(out, n);
        EMIT(dx, n);
        free(out), free(dx);
        break;
    }
    case 14: {  // soft-capped fused cross-entropy, in place
        int N = ip[0], V = ip[1];
        float *losses = zeros_(N);
        float fcount = (float)crossentropy_softcap_fused(losses, F32(0), I32(1), fp[0], fp[1], N, V);
        EMIT(losses, N);
        EMIT(&fcount, 1);
        EMIT(F32(0), (int64_t)N * V);
        free(losses);
        break;
    }
    default:
        die_("unknown op");
    }
    fseek(o, 0, SEEK_SET);
    fwrite(&nout, 4, 1, o);
    if (fclose(o) != 0) die_("write failed");
    for (int i = 0; i < nt; i++) free(t[i].data);
    return 0;
}
