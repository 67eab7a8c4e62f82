/* driver_quant.c: the C side of tests/gguf/test_quant_ggml.py and tests/hf/test_quant_bnb.py.
 *
 *   driver_quant FMT IN.safetensors OUT.safetensors
 * IN holds "w" F32 [OC, C] and, optionally, "x" F32 [N, C], "dy" F32 [N, OC], "bias" F32 [OC].
 * OUT gets "q" U8 [OC, row_bytes(C)] (the blocks of w quantized to FMT: quantize_rows), "deq"
 * F32 [OC, C] (those blocks dequantized row by row) and, with x and dy, the quantized matmuls
 * "y" = matmul_q_forward(x, q, bias), "dx" = matmul_q_backward_input(dy, q) (accumulated onto
 * x, to check the +=), and the f32 kernels on deq: "y_ref" = matmul_forward(x, deq, bias),
 * "dx_ref" = x + matmul_backward(dy, deq). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"

static const float *f32_of(const peft_st_file *f, const char *name, int ndim) {
    const peft_st_tensor *t = peft_st_find(f, name);
    return t && t->dtype == PEFT_F32 && t->ndim == ndim ? t->data : NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: driver_quant FMT IN.safetensors OUT.safetensors\n");
        return 2;
    }
    const peft_qformat *fmt = peft_qformat_find(argv[1]);
    if (!fmt || !fmt->quantize_rows) {
        fprintf(stderr, "driver_quant: %s is not a format peft.c writes\n", argv[1]);
        return 2;
    }
    peft_err err = {0};
    peft_st_file *in;
    if (peft_st_open(argv[2], &in, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const peft_st_tensor *wt = peft_st_find(in, "w");
    const float *w = f32_of(in, "w", 2), *x = f32_of(in, "x", 2), *dy = f32_of(in, "dy", 2), *bias = f32_of(in, "bias", 1);
    if (!w || wt->shape[1] % fmt->block) {
        fprintf(stderr, "driver_quant: needs F32 w [OC, C], C a multiple of %d\n", fmt->block);
        peft_st_close(in);
        return 2;
    }
    const int OC = (int)wt->shape[0], C = (int)wt->shape[1];
    const int N = x ? (int)peft_st_find(in, "x")->shape[0] : 0;
    const size_t rb = fmt->row_bytes(C);
    unsigned char *q = malloc(rb * OC);
    float *deq = malloc((size_t)OC * C * sizeof(float));
    float *y = malloc((size_t)(N ? N : 1) * OC * sizeof(float)), *y_ref = malloc((size_t)(N ? N : 1) * OC * sizeof(float));
    float *dx = malloc((size_t)(N ? N : 1) * C * sizeof(float)), *dx_ref = malloc((size_t)(N ? N : 1) * C * sizeof(float));
    int rc = q && deq && y && y_ref && dx && dx_ref ? fmt->quantize_rows(q, w, OC, C) : PEFT_ENOMEM;
    for (int r = 0; rc == PEFT_OK && r < OC; r++) fmt->dequantize_row(deq + (size_t)r * C, q + rb * r, C);
    peft_st_entry e[6] = {
        {.name = "q", .dtype = PEFT_U8, .ndim = 2, .shape = {OC, (int64_t)rb}, .data = q},
        {.name = "deq", .dtype = PEFT_F32, .ndim = 2, .shape = {OC, C}, .data = deq},
    };
    int n = 2;
    if (rc == PEFT_OK && x && dy) {
        memcpy(dx, x, (size_t)N * C * sizeof(float));
        memcpy(dx_ref, x, (size_t)N * C * sizeof(float));
        rc = matmul_q_forward(y, x, q, fmt, bias, N, C, OC);
        if (rc == PEFT_OK) rc = matmul_q_backward_input(dx, dy, q, fmt, N, C, OC);
        matmul_forward(y_ref, x, deq, bias, N, C, OC);
        matmul_backward(dx_ref, NULL, NULL, dy, x, deq, N, C, OC);
        e[n++] = (peft_st_entry){.name = "y", .dtype = PEFT_F32, .ndim = 2, .shape = {N, OC}, .data = y};
        e[n++] = (peft_st_entry){.name = "y_ref", .dtype = PEFT_F32, .ndim = 2, .shape = {N, OC}, .data = y_ref};
        e[n++] = (peft_st_entry){.name = "dx", .dtype = PEFT_F32, .ndim = 2, .shape = {N, C}, .data = dx};
        e[n++] = (peft_st_entry){.name = "dx_ref", .dtype = PEFT_F32, .ndim = 2, .shape = {N, C}, .data = dx_ref};
    }
    if (rc) fprintf(stderr, "driver_quant: out of memory\n");
    else if (peft_st_write(argv[3], e, n, NULL, 0, &err)) rc = 1, fprintf(stderr, "%s\n", err.msg);
    free(q), free(deq), free(y), free(y_ref), free(dx), free(dx_ref);
    peft_st_close(in);
    return rc ? 1 : 0;
}
