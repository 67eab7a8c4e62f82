/* site.c: the frozen linear layer plus whatever adapter is attached to it. */
#include "site.h"

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "methods/adapter.h"

int site_forward(const peft_site *s, float *y, const float *x, int N, int save) {
    peft_adapter *a = s->adapter;
    if (a && a->method->forward_replaces_base) {
        a->method->forward(a, s, y, x, N, save);
        return PEFT_OK;
    }
    int rc = PEFT_OK;
    if (s->w_q) rc = matmul_q_forward(y, x, s->w_q, s->qfmt, s->bias, N, s->in_features, s->out_features);
    else if (s->w_half) rc = s->half->forward(y, x, s->w_half, s->bias, N, s->in_features, s->out_features);
    else matmul_forward(y, x, s->weight, s->bias, N, s->in_features, s->out_features);
    if (a && rc == PEFT_OK) a->method->forward(a, s, y, x, N, save);
    return rc;
}

int site_backward(const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    peft_adapter *a = s->adapter;
    int rc = PEFT_OK;
    if (!(a && a->method->forward_replaces_base) && dx) {
        if (s->w_q) rc = matmul_q_backward_input(dx, dy, s->w_q, s->qfmt, N, s->in_features, s->out_features);
        else if (s->wt_half) rc = s->half->backward_input(dx, dy, s->wt_half, N, s->in_features, s->out_features);
        else matmul_backward(dx, NULL, NULL, dy, x, s->weight, N, s->in_features, s->out_features);
    }
    if (a && rc == PEFT_OK) a->method->backward(a, s, dx, dy, x, N);
    return rc;
}
