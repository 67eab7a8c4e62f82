/* vera.h: VeRA (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation"), as HF
 * PEFT's VeraConfig:
 *   y = x W^T + b + lambda_b * ((lambda_d * (dropout(x) A_s^T)) B_s^T)
 * A = vera_A [r, max_in] and B = vera_B [max_out, r] are frozen random bases shared by every
 * site of the set (Kaiming-uniform, saved as "base_model.vera_A" / "base_model.vera_B");
 * A_s = A[:, :in] and B_s = B[:out, :] are the site's slices. Per site, vera_lambda_b [out]
 * (init 0) and vera_lambda_d [r] (init d_initial = opts.init_scale) are trained. */
#ifndef PEFT_METHODS_VERA_H
#define PEFT_METHODS_VERA_H

#include "methods/adapter.h"

extern const peft_method peft_method_vera;

#endif
