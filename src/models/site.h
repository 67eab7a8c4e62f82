/* site.h: an adapter site, a frozen linear layer of the base model named by its Hugging
 * Face module name ("model.layers.3.self_attn.q_proj"). PEFT methods attach to sites; the
 * model computes every linear layer through site_forward / site_backward so that a
 * method's contribution is added without the model knowing which method it is. */
#ifndef PEFT_MODELS_SITE_H
#define PEFT_MODELS_SITE_H

#include <stdint.h>

struct peft_adapter;     /* methods/adapter.h */
struct peft_half_matmul; /* kernels/kernels.h */
struct peft_qformat;     /* kernels/quant.h */

typedef struct peft_site {
    char name[128];        /* HF module name */
    const char *kind;      /* "q_proj", "k_proj", ... (the last name component) */
    int layer;             /* decoder layer index, -1 for sites outside the layers */
    int fan_in_fan_out;    /* the HF weight is stored [in, out] (GPT-2's Conv1D): PEFT's fan_in_fan_out */
    int in_features;       /* C_in */
    int out_features;      /* C_out */
    float *weight;         /* [out, in], frozen (written only by merge/unmerge, and by LISA, which trains it) */
    float *bias;           /* [out] or NULL */
    /* Optional 16-bit copies of the frozen weight (llama_use_half) in format `half`, packed
     * for its forward and backward_input; NULL: the f32 weight is used. */
    const struct peft_half_matmul *half;
    const uint16_t *w_half, *wt_half;
    /* Optional block-quantized copy of the frozen weight (llama_quantize): out rows of
     * qfmt->row_bytes(in) bytes; used by forward and backward_input when non-NULL. */
    const struct peft_qformat *qfmt;
    const void *w_q;
    struct peft_adapter *adapter; /* attached method, or NULL */
} peft_site;

/* y[N,out] = x[N,in] W^T + b, plus the attached adapter's term. save: a training forward,
 * after which site_backward follows (the adapter keeps what it needs). Both return PEFT_OK,
 * or PEFT_ENOMEM when a 16-bit or quantized matmul could not allocate its scratch (outputs incomplete). */
int site_forward(const peft_site *s, float *y, const float *x, int N, int save);
/* dx[N,in] += dy W (+ adapter's input gradient); adapter parameter gradients accumulate.
 * dx may be NULL when no input gradient is needed. */
int site_backward(const peft_site *s, float *dx, const float *dy, const float *x, int N);

#endif
