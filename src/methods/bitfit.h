/* bitfit.h: BitFit (Ben Zaken et al., 2022, "BitFit: Simple Parameter-efficient Fine-tuning
 * for Transformer-based Masked Language-models"): train the bias terms only. Llama-family
 * sites mostly have no bias, so every target site gets a trainable bias delta
 *   y = x W^T + b + b'        b' = bitfit_bias [out], zero at init
 * (b is the site's own bias when it has one, 0 otherwise). peft_type "BITFIT" is peft.c's
 * own (HF PEFT has no BitFit tuner); the key is "<site>.bitfit_bias". Merge adds b' into the
 * site's bias; a site without a bias cannot take it in place (PEFT_EUNSUPPORTED). */
#ifndef PEFT_METHODS_BITFIT_H
#define PEFT_METHODS_BITFIT_H

#include "methods/adapter.h"

extern const peft_method peft_method_bitfit;

#endif
