/* patch_embed.c: ViT's patch embedding, Conv2d(Cin, C, kernel_size = stride = P) with bias,
 * flattened to tokens (HF ViTPatchEmbeddings: conv, then flatten(2).transpose(1, 2)).
 * Kernel and stride are equal, so the patches do not overlap and im2col is a permutation of the
 * image: cols[b*NP + p][(ci*P + y)*P + x] = img[b][ci][py*P + y][px*P + x], p = py*NPW + px, which
 * is the order of PyTorch's weight [C, Cin, P, P] viewed as [C, Cin*P*P]. The conv is then one
 * nn.Linear-shaped matmul, and its backward for the weight and bias is matmul_backward on cols.
 * Rows and columns of pixels past the last whole patch are ignored (Conv2d's floor). */
#include <string.h>

#include "kernels.h"

void patch_embed_forward(float *out, float *cols, const float *img, const float *weight, const float *bias, int B,
                         int Cin, int H, int W, int P, int C) {
    // out (B, NP, C), cols (B*NP, Cin*P*P) saved for backward, img (B, Cin, H, W),
    // weight (C, Cin, P, P), bias (C) or NULL; NP = (H/P) * (W/P)
    const int nph = H / P, npw = W / P, np = nph * npw, K = Cin * P * P;
#pragma omp parallel for schedule(static) if ((size_t)B * Cin * H * W > 65536)
    for (int bp = 0; bp < B * np; bp++) {
        const int b = bp / np, py = (bp % np) / npw, px = bp % npw;
        float *row = cols + (size_t)bp * K;
        for (int ci = 0; ci < Cin; ci++)
            for (int y = 0; y < P; y++)
                memcpy(row + ((size_t)ci * P + y) * P,
                       img + (((size_t)b * Cin + ci) * H + (size_t)py * P + y) * W + (size_t)px * P,
                       (size_t)P * sizeof(float));
    }
    matmul_forward(out, cols, weight, bias, B * np, K, C);
}

void patch_embed_backward(float *dweight, float *dbias, const float *dout, const float *cols, int B, int Cin, int H,
                          int W, int P, int C) {
    // dweight (C, Cin, P, P) +=, dbias (C) +=, dout (B, NP, C), cols (B*NP, Cin*P*P) from the forward.
    // No image gradient: the pixels are data.
    matmul_backward(NULL, dweight, dbias, dout, cols, NULL, B * (H / P) * (W / P), Cin * P * P, C);
}
