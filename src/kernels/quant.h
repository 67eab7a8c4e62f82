/* quant.h: block-quantized weight formats, and the frozen matmuls that run on them.
 *
 * A format stores a row of n values (n a multiple of its block) as n/block blocks of bytes;
 * rows are independent, so a [OC, C] weight in a format is OC rows of row_bytes(C) bytes each
 * (GGUF's layout: ne[0] = C runs along a row). peft.c dequantizes them tile by tile inside the
 * matmuls (docs/quantization.md), so the frozen base stays in block form and only a bounded
 * scratch of f32 rows exists at any time.
 *
 *  q8_0  (ggml 8):  32 values, f16 d + int8 q[32]                      x = d q
 *  q4_0  (ggml 2):  32 values, f16 d + 16 bytes of nibbles             x = d (q - 8)
 *  q4_1  (ggml 3):  32 values, f16 d, f16 m + nibbles                  x = d q + m
 *  q4_k  (ggml 12): 256 values in 8 sub-blocks with 6-bit scales/mins  (read only)
 *  q5_k  (ggml 13): as q4_k with a fifth bit                           (read only)
 *  q6_k  (ggml 14): 256 values, 16 int8 scales, 6-bit q                (read only)
 *  nf4   (bitsandbytes, no ggml type): 64 values, 4-bit indices into the NormalFloat4 table
 *        times the block's absmax; the absmax values are double-quantized as bitsandbytes'
 *        compress_statistics does over the WHOLE tensor: minus their mean (offset), as uint8
 *        codes of its signed dynamic map times one f32 scale per 256 consecutive blocks of the
 *        flattened tensor. So that a row still dequantizes on its own, each row carries copies
 *        of what it needs: [f32 offset][u32 phase: its first block's place in its group]
 *        [f32 scale of each group it touches][u8 code per block][n/2 bytes of nibbles, high
 *        nibble first]: 4.1..4.7 bits per value (docs/quantization.md). */
#ifndef PEFT_KERNELS_QUANT_H
#define PEFT_KERNELS_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef struct peft_qformat {
    const char *name; /* "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "nf4" */
    int ggml_type;    /* ggml's type number (PEFT_GGML_* in io/gguf.h), -1 for nf4 */
    int block;        /* values per block; a row's length must be a multiple of it */
    /* bytes of one row of n values (n a multiple of block) */
    size_t (*row_bytes)(int64_t n);
    /* dst[n] = the row src dequantized (bit for bit as gguf.quants.dequantize / bitsandbytes'
     * dequantize_4bit) */
    void (*dequantize_row)(float *dst, const void *src, int64_t n);
    /* dst[row_bytes(n)] = src[n] quantized (bit for bit as gguf.quants.quantize /
     * gguf.quants.quantize); NULL for the formats peft.c only reads, and for nf4 */
    void (*quantize_row)(void *dst, const float *src, int64_t n);
    /* dst[rows * row_bytes(n)] = the tensor src[rows, n] quantized; nf4 has only this one (its
     * statistics are taken over the whole tensor). Returns PEFT_OK or PEFT_ENOMEM. NULL where
     * peft.c only reads the format. */
    int (*quantize_rows)(void *dst, const float *src, int64_t rows, int64_t n);
} peft_qformat;

/* By name (case-insensitive: "Q8_0" and "q8_0" both work), or NULL. */
const peft_qformat *peft_qformat_find(const char *name);
/* By ggml type number, or NULL (also NULL for f32/f16/bf16, which are not block formats). */
const peft_qformat *peft_qformat_of_ggml(int ggml_type);

/* Frozen dense layers over a weight w[OC, C] stored as OC rows of fmt->row_bytes(C) bytes at qw.
 * Both dequantize a tile of rows at a time into a bounded f32 scratch (allocated per call) and
 * multiply it with peft_sgemm, so they compute exactly matmul_forward / matmul_backward on the
 * dequantized weight, up to the order of summation. Return PEFT_OK, or PEFT_ENOMEM (outputs
 * incomplete) when the scratch cannot be allocated. Not inside an OpenMP parallel region. */
/* out[N,OC] = inp[N,C] @ w^T (+ bias[OC] if non-NULL). Overwrites out. */
int matmul_q_forward(float *out, const float *inp, const void *qw, const peft_qformat *fmt, const float *bias, int N,
                     int C, int OC);
/* dinp[N,C] += dout[N,OC] @ w. */
int matmul_q_backward_input(float *dinp, const float *dout, const void *qw, const peft_qformat *fmt, int N, int C,
                            int OC);

#endif
