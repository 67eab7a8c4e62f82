/* bottleneck.h: bottleneck adapters, two methods.
 *
 * adapter_seq: Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP": a
 *   sequential adapter on the site's output,
 *     h = x W^T + b,   y = h + s * (act(dropout(h) D^T + d) U^T + u)
 * adapter_par: He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
 *   Learning" (the parallel adapter): the same bottleneck on the site's input,
 *     y = x W^T + b + s * (act(dropout(x) D^T + d) U^T + u)
 * D = adapter_down.weight [r, dim] (dim = out for seq, in for par), d = adapter_down.bias [r],
 * U = adapter_up.weight [out, r], u = adapter_up.bias [out]; act = SiLU ("swish") for the
 * sequential adapter and ReLU for the parallel one (the defaults of adapter-transformers'
 * HoulsbyConfig and ParBnConfig); s = alpha / r
 * (alpha / sqrt(r) with rsLoRA), so alpha = r gives the papers' unscaled adapter and
 * alpha = 4 r He et al.'s s = 4. Init: D as LoRA's A, d = 0, U = 0, u = 0: training starts at
 * the base model. The nonlinearity makes them non-mergeable (merge = NULL). */
#ifndef PEFT_METHODS_BOTTLENECK_H
#define PEFT_METHODS_BOTTLENECK_H

#include "methods/adapter.h"

extern const peft_method peft_method_adapter_seq;
extern const peft_method peft_method_adapter_par;

#endif
