/* svft.h: singular-value fine-tuning (in the spirit of SVDiff, Han et al., 2023, "SVDiff:
 * Compact Parameter Space for Diffusion Fine-Tuning", and SVFT, Lingam et al., 2024):
 * W = U diag(S) Vt is computed once at create and only a shift of the singular values is
 * trained:  y = x W^T + b + ((dropout(x) Vt^T) * dS) U^T,  dS [min(out, in)], init 0.
 * PEFT has no such tuner: peft_type "SVFT", key "<site>.svft_delta_s". */
#ifndef PEFT_METHODS_SVFT_H
#define PEFT_METHODS_SVFT_H

#include "methods/adapter.h"

extern const peft_method peft_method_svft;

#endif
