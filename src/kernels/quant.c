/* quant.c: the block formats of quant.h (dequantization of everything GGUF files hold, and
 * quantization into q8_0, q4_0, q4_1 and nf4) and the frozen matmuls that dequantize tile by tile. */
#include "quant.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "kernels.h"
#include "peft.h"

/* gguf.quants and bitsandbytes round every product and sum on its own (numpy / torch, f32): a
 * fused multiply-add would round once and differ in the last bit, so none may be formed here. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static float h2f(const unsigned char *p) { return peft_f16_to_f32(rd16(p)); }
static void wr16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v & 0xFF);
    p[1] = (unsigned char)(v >> 8);
}

/* ---- ggml's formats: dequantization (gguf.quants.dequantize, bit for bit) --------------- */

/* Q4_0, 18 bytes: f16 d, 16 bytes of nibbles; x[j] = d (lo(qs[j]) - 8), x[j+16] = d (hi(qs[j]) - 8). */
static void deq_q4_0(const unsigned char *b, float *y) {
    float d = h2f(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 0xF) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

/* Q4_1, 20 bytes: f16 d, f16 m, nibbles as Q4_0; x = d q + m. */
static void deq_q4_1(const unsigned char *b, float *y) {
    float d = h2f(b), m = h2f(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 0xF) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}

/* Q8_0, 34 bytes: f16 d, int8 q[32]; x = q d. */
static void deq_q8_0(const unsigned char *b, float *y) {
    float d = h2f(b);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

/* The 8 six-bit scales and mins of a Q4_K/Q5_K block, packed in 12 bytes. */
static void k_scale_min(const unsigned char *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K, 144 bytes: f16 d, f16 dmin, scales[12], qs[128]; 8 sub-blocks of 32, sub-block s =
 * 2c + h takes nibble h of qs[32c .. 32c+31]; x = (d sc_s) q - (dmin m_s). */
static void deq_q4_k(const unsigned char *b, float *y) {
    float d = h2f(b), dmin = h2f(b + 2);
    const unsigned char *scales = b + 4, *qs = b + 16;
    for (int s = 0; s < 8; s++) {
        int sc, mn;
        k_scale_min(scales, s, &sc, &mn);
        float ds = d * (float)sc, dm = dmin * (float)mn;
        const unsigned char *q = qs + 32 * (s / 2);
        for (int l = 0; l < 32; l++) y[32 * s + l] = ds * (float)((q[l] >> (4 * (s % 2))) & 0xF) - dm;
    }
}

/* Q5_K, 176 bytes: as Q4_K with qh[32] before qs; bit s of qh[l] is bit 4 of sub-block s's q. */
static void deq_q5_k(const unsigned char *b, float *y) {
    float d = h2f(b), dmin = h2f(b + 2);
    const unsigned char *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int s = 0; s < 8; s++) {
        int sc, mn;
        k_scale_min(scales, s, &sc, &mn);
        float ds = d * (float)sc, dm = dmin * (float)mn;
        const unsigned char *q = qs + 32 * (s / 2);
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> (4 * (s % 2))) & 0xF) | (((qh[l] >> s) & 1) << 4);
            y[32 * s + l] = ds * (float)v - dm;
        }
    }
}

/* Q6_K, 210 bytes: ql[128], qh[64], int8 scales[16], f16 d. Each half (128 values) takes 64
 * bytes of ql and 32 of qh; its group g (0..3) of 32 values: low nibble (g < 2) or high nibble
 * (g >= 2) of ql[32 (g % 2) + l], bits 2g..2g+1 of qh[l]; x = (d sc[i / 16]) (q - 32). */
static void deq_q6_k(const unsigned char *b, float *y) {
    const unsigned char *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = h2f(b + 208);
    for (int half = 0; half < 2; half++)
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) {
                int i = 128 * half + 32 * g + l;
                int lo = (ql[64 * half + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
                int hi = (qh[32 * half + l] >> (2 * g)) & 3;
                y[i] = d * (float)sc[i / 16] * (float)((lo | hi << 4) - 32);
            }
}

/* ---- ggml's formats: quantization (gguf.quants.quantize = ggml's *_ref, bit for bit) ------ */

/* Q8_0: d = amax / 127, q = round-half-away(x / d) computed as x * (1/d). */
static void q_q8_0(unsigned char *b, const float *x) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, peft_f32_to_f16(d));
    for (int j = 0; j < 32; j++) b[2 + j] = (unsigned char)(int8_t)roundf(x[j] * id);
}

/* Q4_0: d = -(the value of largest magnitude, the first one on ties) / 8, q = min(15, trunc(x/d + 8.5)). */
static void q_q4_0(unsigned char *b, const float *x) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
    float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, peft_f32_to_f16(d));
    for (int j = 0; j < 16; j++) {
        int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
        b[2 + j] = (unsigned char)((q0 < 15 ? q0 : 15) | (q1 < 15 ? q1 : 15) << 4);
    }
}

/* Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)). */
static void q_q4_1(unsigned char *b, const float *x) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < 32; j++) mn = fminf(mn, x[j]), mx = fmaxf(mx, x[j]);
    float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, peft_f32_to_f16(d));
    wr16(b + 2, peft_f32_to_f16(mn));
    for (int j = 0; j < 16; j++) {
        int q0 = (int)((x[j] - mn) * id + 0.5f), q1 = (int)((x[j + 16] - mn) * id + 0.5f);
        b[4 + j] = (unsigned char)((q0 < 15 ? q0 : 15) | (q1 < 15 ? q1 : 15) << 4);
    }
}

/* One row-per-block routine per direction: a ggml format is its block size, bytes and two
 * block functions, and a row is its blocks one after another. */
#define GGML_ROWS(name, blk, bytes, deq, q)                                                           \
    static size_t name##_row_bytes(int64_t n) { return (size_t)(n / (blk)) * (bytes); }               \
    static void name##_dequantize_row(float *dst, const void *src, int64_t n) {                       \
        const unsigned char *p = src;                                                                 \
        for (int64_t i = 0; i < n / (blk); i++) deq(p + (size_t)i * (bytes), dst + (size_t)i * (blk)); \
    }                                                                                                 \
    Q_ROW_##q(name, blk, bytes)
#define Q_ROW_none(name, blk, bytes)
#define Q_ROW_some(name, blk, bytes)                                                                  \
    static void name##_quantize_row(void *dst, const float *src, int64_t n) {                         \
        unsigned char *p = dst;                                                                       \
        for (int64_t i = 0; i < n / (blk); i++) name##_qblock(p + (size_t)i * (bytes), src + (size_t)i * (blk)); \
    }
#define q8_0_qblock q_q8_0
#define q4_0_qblock q_q4_0
#define q4_1_qblock q_q4_1
GGML_ROWS(q8_0, 32, 34, deq_q8_0, some)
GGML_ROWS(q4_0, 32, 18, deq_q4_0, some)
GGML_ROWS(q4_1, 32, 20, deq_q4_1, some)
GGML_ROWS(q4_k, 256, 144, deq_q4_k, none)
GGML_ROWS(q5_k, 256, 176, deq_q5_k, none)
GGML_ROWS(q6_k, 256, 210, deq_q6_k, none)

/* ---- nf4 (bitsandbytes 0.50.2 on CPU, blocksize 64, compress_statistics) ----------------- */

/* bitsandbytes' NF4 table (backends/utils.py _NF4_QUANT_TABLE), ascending. */
static const float nf4_code[16] = {
    -0x1p+0f, -0x1.647362p-1f, -0x1.0cd66p-1f, -0x1.94654p-2f, -0x1.23449ap-2f, -0x1.7a6a7ep-3f,
    -0x1.74f0e2p-4f, 0x0p+0f, 0x1.45f5fep-4f, 0x1.4995c6p-3f, 0x1.f809bap-3f, 0x1.5a0674p-2f,
    0x1.c3497p-2f, 0x1.200f56p-1f, 0x1.722766p-1f, 0x1p+0f,
};

/* create_dynamic_map(signed=True) as f32, ascending (bitsandbytes 0.50.2 leaves code[0] at
 * -0.99296874; its older BinSearch kernel overwrote it with -1). */
static const float dyn_code[256] = {
    -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f, -0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
    -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f, -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f,
    -0x1.893334p-1f, -0x1.82p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f, -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f,
    -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f, -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
    -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f, -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
    -0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f, -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f, -0x1.0cp-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f, -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
    -0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f, -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f, -0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f, -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f,
    -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f, -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f, -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
    -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f, -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f, 0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f, 0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f, 0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f, 0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f, 0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f, 0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
    0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f, 0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
    0x1.4eb854p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f, 0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f, 0x1.6b3334p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
    0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f, 0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
    0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f, 0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f, 0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f, 0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,
    0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f, 0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f, 0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f, 0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

#define NF4_BLOCK 64
#define NF4_GROUP 256 /* blocks per group of the double-quantized absmax */

/* Groups one row's blocks can touch: its first block sits anywhere in a group (phase). */
static int64_t nf4_groups(int64_t nb) { return (nb + NF4_GROUP - 2) / NF4_GROUP + 1; }

/* Row layout: f32 offset, u32 phase (the group position of the row's first block), f32 group
 * scales[nf4_groups(nb)], u8 absmax codes[nb], n/2 bytes of nibbles (high nibble first). */
static size_t nf4_row_bytes(int64_t n) {
    int64_t nb = n / NF4_BLOCK;
    return 8 + 4 * (size_t)nf4_groups(nb) + (size_t)nb + (size_t)n / 2;
}

static float rdf(const unsigned char *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static void nf4_dequantize_row(float *dst, const void *src, int64_t n) {
    const unsigned char *p = src;
    const int64_t nb = n / NF4_BLOCK;
    const float offset = rdf(p);
    uint32_t phase;
    memcpy(&phase, p + 4, 4);
    const unsigned char *scales = p + 8, *codes = scales + 4 * nf4_groups(nb), *qs = codes + nb;
    for (int64_t j = 0; j < nb; j++) {
        /* bitsandbytes: absmax = dequantize_blockwise(codes) + offset, then code[q] * absmax */
        float am = dyn_code[codes[j]] * rdf(scales + 4 * ((phase + j) / NF4_GROUP)) + offset;
        const unsigned char *q = qs + j * (NF4_BLOCK / 2);
        float *y = dst + j * NF4_BLOCK;
        for (int l = 0; l < NF4_BLOCK / 2; l++) {
            y[2 * l] = nf4_code[q[l] >> 4] * am;
            y[2 * l + 1] = nf4_code[q[l] & 0xF] * am;
        }
    }
}

/* bitsandbytes' CPU quantize_blockwise (csrc/cpu_ops.cpp, 0.50.2) does not search the map: it
 * rounds v in [-1, 1] to one of 65536 evenly spaced bins, ((v + 1) * 0.5) * 65535 + 0.5
 * truncated, and reads the code of the bin's left edge -1 + 2i/65535 from a table (the number
 * of map midpoints below that edge). So a v within half a bin (1.5e-5) of a midpoint, or in a
 * bin holding several codes near 0, gets a neighbour of its nearest code; replaying the table
 * gives bitsandbytes' codes exactly. */
#define DYN_LUT 65536
static void dyn_lut_build(unsigned char *lut /* [DYN_LUT] */) {
    float mid[255];
    for (int i = 0; i < 255; i++) mid[i] = 0.5f * (dyn_code[i] + dyn_code[i + 1]);
    int k = 0;
    for (int i = 0; i < DYN_LUT; i++) {
        const float edge = -1.0f + (2.0f * (float)i) / (float)(DYN_LUT - 1);
        while (k < 255 && mid[k] < edge) k++;
        lut[i] = (unsigned char)k;
    }
}

static unsigned char dyn_index(const unsigned char *lut, float v) {
    v = fminf(fmaxf(v, -1.0f), 1.0f);
    return lut[(uint16_t)((v + 1.0f) * 0.5f * (float)(DYN_LUT - 1) + 0.5f)];
}

/* torch.mean of a contiguous f32 vector, bit for bit: torch sums it (aten/native/cpu/SumKernel.cpp,
 * cascade_sum, one thread, AVX2 kernels) as 8-lane vectors, 4 of them interleaved, each of the
 * 32 accumulators cascaded over 4 levels of 2^max(4, ceil(log2 rows)/4) rows; then the vector
 * remainder, the 4 accumulators, the scalar tail and the 8 lanes in that order; and divides in f32.
 * (torch splits tensors over 32768 elements across threads, and AVX512 builds use 16 lanes:
 * there the mean can differ in the last bit, docs/quantization.md.) */
static float torch_mean_f32(const float *x, int64_t n) {
    enum { W = 8, ILP = 4, LEVELS = 4 };
    const int64_t nvec = n / W, rows = nvec / ILP;
    int lp = 1; /* ceil(log2(rows)), 1 for rows <= 2 as torch's CeilLog2 */
    while (rows > 2 && ((int64_t)1 << lp) < rows) lp++;
    lp = lp / LEVELS > 4 ? lp / LEVELS : 4;
    const int64_t step = (int64_t)1 << lp, mask = step - 1;
    float acc[LEVELS][ILP * W] = {{0}};
    int64_t i = 0;
    while (i + step <= rows) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < ILP * W; k++) acc[0][k] += x[i * ILP * W + k];
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < ILP * W; k++) acc[j][k] += acc[j - 1][k], acc[j - 1][k] = 0.0f;
            if (i & (mask << (j * lp))) break;
        }
    }
    for (; i < rows; i++)
        for (int k = 0; k < ILP * W; k++) acc[0][k] += x[i * ILP * W + k];
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < ILP * W; k++) acc[0][k] += acc[j][k];
    for (int64_t v = rows * ILP; v < nvec; v++) /* acc[0][0..W) is accumulator 0 */
        for (int l = 0; l < W; l++) acc[0][l] += x[v * W + l];
    for (int r = 1; r < ILP; r++)
        for (int l = 0; l < W; l++) acc[0][l] += acc[0][r * W + l];
    float sum = 0.0f;
    for (int64_t k = nvec * W; k < n; k++) sum += x[k];
    for (int l = 0; l < W; l++) sum += acc[0][l];
    return sum / (float)n;
}

/* src[rows, n] as one tensor, as bitsandbytes.functional.quantize_4bit(W, blocksize=64,
 * compress_statistics=True, quant_type="nf4") flattens it: absmax per 64 values, their mean as
 * offset, absmax - offset quantized to 8 bits in groups of 256 blocks with the dynamic map. */
static int nf4_quantize_rows(void *dst, const float *src, int64_t rows, int64_t n) {
    const int64_t nb = n / NF4_BLOCK, total = rows * nb, ngroups = (total + NF4_GROUP - 1) / NF4_GROUP;
    float *absmax = malloc((size_t)(total ? total : 1) * sizeof(float));
    float *gscale = malloc((size_t)(ngroups ? ngroups : 1) * sizeof(float));
    unsigned char *codes = malloc((size_t)(total ? total : 1)), *lut = malloc(DYN_LUT);
    if (!absmax || !gscale || !codes || !lut) {
        free(absmax), free(gscale), free(codes), free(lut);
        return PEFT_ENOMEM;
    }
    for (int64_t b = 0; b < total; b++) {
        const float *x = src + b * NF4_BLOCK;
        float am = 0.0f;
        for (int l = 0; l < NF4_BLOCK; l++) am = fmaxf(am, fabsf(x[l]));
        absmax[b] = am;
    }
    const float offset = total ? torch_mean_f32(absmax, total) : 0.0f;
    dyn_lut_build(lut);
    for (int64_t g = 0; g < ngroups; g++) {
        const int64_t b1 = (g + 1) * NF4_GROUP < total ? (g + 1) * NF4_GROUP : total;
        float am = 0.0f;
        for (int64_t b = g * NF4_GROUP; b < b1; b++) am = fmaxf(am, fabsf(absmax[b] - offset));
        gscale[g] = am;
        /* bitsandbytes multiplies by the reciprocal; an all-zero group gets code 0 */
        const float inv = 1.0f / am;
        for (int64_t b = g * NF4_GROUP; b < b1; b++) codes[b] = am > 0.0f ? dyn_index(lut, (absmax[b] - offset) * inv) : 0;
    }
    const size_t rb = nf4_row_bytes(n);
    const int64_t ng = nf4_groups(nb);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        unsigned char *p = (unsigned char *)dst + (size_t)r * rb;
        const uint32_t phase = (uint32_t)((r * nb) % NF4_GROUP);
        const int64_t g0 = r * nb / NF4_GROUP;
        memcpy(p, &offset, 4);
        memcpy(p + 4, &phase, 4);
        for (int64_t k = 0; k < ng; k++) {
            float s = g0 + k < ngroups ? gscale[g0 + k] : 0.0f;
            memcpy(p + 8 + 4 * k, &s, 4);
        }
        unsigned char *pc = p + 8 + 4 * ng, *qs = pc + nb;
        memcpy(pc, codes + r * nb, (size_t)nb);
        for (int64_t j = 0; j < nb; j++) {
            const int64_t b = r * nb + j;
            /* the 4-bit values use the exact absmax, scaled and clamped as bitsandbytes does */
            const float inv = 1.0f / fmaxf(absmax[b], 1e-38f);
            const float *x = src + b * NF4_BLOCK;
            for (int l = 0; l < NF4_BLOCK; l += 2) {
                unsigned char q[2];
                for (int t = 0; t < 2; t++) {
                    float v = fminf(fmaxf(x[l + t] * inv, -1.0f), 1.0f);
                    int k = 0; /* torch.bucketize(right=False): the number of midpoints < v */
                    while (k < 15 && (nf4_code[k] + nf4_code[k + 1]) / 2.0f < v) k++;
                    q[t] = (unsigned char)k;
                }
                qs[j * (NF4_BLOCK / 2) + l / 2] = (unsigned char)(q[0] << 4 | q[1]);
            }
        }
    }
    free(absmax), free(gscale), free(codes), free(lut);
    return PEFT_OK;
}

/* ---- the table --------------------------------------------------------------------------- */

/* Row-independent formats quantize a tensor row by row. */
#define GGML_TENSOR(name)                                                                        \
    static int name##_quantize_rows(void *dst, const float *src, int64_t rows, int64_t n) {      \
        for (int64_t r = 0; r < rows; r++)                                                       \
            name##_quantize_row((unsigned char *)dst + (size_t)r * name##_row_bytes(n), src + r * n, n); \
        return PEFT_OK;                                                                          \
    }
GGML_TENSOR(q8_0)
GGML_TENSOR(q4_0)
GGML_TENSOR(q4_1)

static const peft_qformat formats[] = {
    {"q8_0", 8, 32, q8_0_row_bytes, q8_0_dequantize_row, q8_0_quantize_row, q8_0_quantize_rows},
    {"q4_0", 2, 32, q4_0_row_bytes, q4_0_dequantize_row, q4_0_quantize_row, q4_0_quantize_rows},
    {"q4_1", 3, 32, q4_1_row_bytes, q4_1_dequantize_row, q4_1_quantize_row, q4_1_quantize_rows},
    {"q4_k", 12, 256, q4_k_row_bytes, q4_k_dequantize_row, NULL, NULL},
    {"q5_k", 13, 256, q5_k_row_bytes, q5_k_dequantize_row, NULL, NULL},
    {"q6_k", 14, 256, q6_k_row_bytes, q6_k_dequantize_row, NULL, NULL},
    {"nf4", -1, NF4_BLOCK, nf4_row_bytes, nf4_dequantize_row, NULL, nf4_quantize_rows},
};

const peft_qformat *peft_qformat_find(const char *name) {
    for (size_t i = 0; name && i < sizeof formats / sizeof formats[0]; i++) {
        const char *a = formats[i].name, *b = name;
        while (*a && tolower((unsigned char)*b) == *a) a++, b++;
        if (!*a && !*b) return &formats[i];
    }
    return NULL;
}

const peft_qformat *peft_qformat_of_ggml(int ggml_type) {
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (formats[i].ggml_type == ggml_type) return &formats[i];
    return NULL;
}

/* ---- the matmuls ------------------------------------------------------------------------- */

/* Weight rows dequantized per tile: about 1 M floats (4 MB) of scratch, 16..256 rows. */
static int tile_rows_(int C) {
    int t = (1 << 20) / (C > 0 ? C : 1);
    return t < 16 ? 16 : t > 256 ? 256 : t;
}

/* scratch[r1 - r0, C] = rows r0..r1 of the weight */
static void dequantize_tile_(float *scratch, const void *qw, const peft_qformat *fmt, int r0, int r1, int C) {
    const size_t rb = fmt->row_bytes(C);
#pragma omp parallel for schedule(static)
    for (int r = r0; r < r1; r++)
        fmt->dequantize_row(scratch + (size_t)(r - r0) * C, (const unsigned char *)qw + (size_t)r * rb, C);
}

/* Tile by tile over the weight's rows r0..r1:
 *   forward:        c = out[N,OC],  c[:, r0:r1]  = a=inp[N,C] @ tile[r1-r0, C]^T
 *   backward_input: c = dinp[N,C],  c[N,C]      += a=dout[:, r0:r1] @ tile[r1-r0, C] */
static int tiled_(float *c, const float *a, const void *qw, const peft_qformat *fmt, int N, int C, int OC, int backward) {
    const int tr = tile_rows_(C);
    float *scratch = malloc((size_t)tr * C * sizeof(float));
    if (!scratch) return PEFT_ENOMEM;
    for (int r0 = 0; r0 < OC; r0 += tr) {
        const int r1 = r0 + tr < OC ? r0 + tr : OC;
        dequantize_tile_(scratch, qw, fmt, r0, r1, C);
        if (backward) peft_sgemm(0, 0, N, C, r1 - r0, 1.0f, a + r0, OC, scratch, C, 1.0f, c, C);
        else peft_sgemm(0, 1, N, r1 - r0, C, 1.0f, a, C, scratch, C, 0.0f, c + r0, OC);
    }
    free(scratch);
    return PEFT_OK;
}

int matmul_q_forward(float *out, const float *inp, const void *qw, const peft_qformat *fmt, const float *bias, int N,
                     int C, int OC) {
    if (N <= 0 || OC <= 0) return PEFT_OK;
    if (C <= 0) {
        matmul_fill_bias(out, bias, N, OC);
        return PEFT_OK;
    }
    int rc = tiled_(out, inp, qw, fmt, N, C, OC, 0);
    if (rc == PEFT_OK && bias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
    return rc;
}

int matmul_q_backward_input(float *dinp, const float *dout, const void *qw, const peft_qformat *fmt, int N, int C,
                            int OC) {
    if (N <= 0 || OC <= 0 || C <= 0 || !dinp) return PEFT_OK;
    return tiled_(dinp, dout, qw, fmt, N, C, OC, 1);
}
