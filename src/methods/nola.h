/* nola.h: NOLA (Koohpayegani, Navaneet, Nooralinejad, Kolouri and Pirsiavash, 2024, "NOLA:
 * Compressing LoRA using Linear Combination of Random Basis"):
 *   A = sum_i alpha_i A_i  [r, in],   B = sum_j beta_j B_j  [out, r]   (i < k, j < l)
 *   y = x W^T + b + s * (dropout(x) A^T) B^T,   s = alpha / r (alpha / sqrt(r) with rsLoRA)
 * The bases A_i, B_j are frozen and regenerated from the seed (peft.c's PCG32, stream derived
 * from the site name): only the seed goes to adapter_config.json, only the coefficient
 * vectors nola_alpha [k] and nola_beta [l] are trained and saved.
 * Bases: A_i ~ U(+-1/sqrt(in)) (LoRA's A range), B_j ~ U(+-1/sqrt(r)).
 * Init: alpha ~ U(+-1/sqrt(k)), beta = 0 (training starts at the base model).
 * k = l = NOLA_NUM_BASIS until peft_method_opts carries a basis count. Mergeable. */
#ifndef PEFT_METHODS_NOLA_H
#define PEFT_METHODS_NOLA_H

#include "methods/adapter.h"

#define NOLA_NUM_BASIS 64

extern const peft_method peft_method_nola;

#endif
