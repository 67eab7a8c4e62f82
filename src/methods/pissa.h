/* pissa.h: LoRA with an SVD-based initialisation and a residual base weight:
 *   PiSSA (Meng et al., 2024, "PiSSA: Principal Singular Values and Singular Vectors
 *   Adaptation of Large Language Models"): W = U S Vt, the adapter starts at the principal
 *   r components and the base becomes the residual;
 *   CorDA (Yang et al., 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large
 *   Language Models"): the SVD is of W C, C the covariance of the site's inputs over a
 *   calibration set; "corda_ipm" (instruction-previewed) adapts the largest r components,
 *   "corda_kpm" (knowledge-preserved) the smallest r, keeping the largest frozen.
 * As PEFT's init_lora_weights="pissa" / "corda": with s = alpha / r (or alpha / sqrt(r)),
 *   A = sqrt(S_r / s) Vt_r [r, in], B = U_r sqrt(S_r / s) [out, r], so s B A is the chosen
 *   part, and the site's weight is replaced by W_res = W - s B A while the adapter lives.
 * Training, forward and backward are LoRA's (y = x W_res^T + b + s dropout(x) A^T B^T). */
#ifndef PEFT_METHODS_PISSA_H
#define PEFT_METHODS_PISSA_H

#include "methods/adapter.h"

extern const peft_method peft_method_pissa;
extern const peft_method peft_method_corda_kpm;
extern const peft_method peft_method_corda_ipm;

/* PEFT's ΔW-equivalent LoRA relative to the ORIGINAL weight (save_pretrained's
 * path_initial_model_for_weight_conversion): A2 = [A; A0] [2r, in], B2 = [B, -B0] [out, 2r],
 * A0, B0 the initial values, so that W + s B2 A2 == W_res + s B A. Saved with r and alpha
 * doubled (alpha * sqrt(2) with rsLoRA: the scale is unchanged) and init_lora_weights true,
 * the pair loads as a plain LoRA on the unmodified base model. Returns the rank r (fills
 * A2/B2 when non-NULL), or -1 when `a` is not a PiSSA/CorDA adapter. */
int pissa_lora_equivalent(const peft_adapter *a, float *A2, float *B2);

/* ---- CorDA calibration: a process-wide covariance store keyed by site name ----------------
 * Not thread-safe; fill it before creating the adapters. */

/* One calibration batch through site s: x [N, in] (the site's input). As PEFT's hook:
 * xn = x / |max(x)|, C += xn^T xn, count += 1; the covariance used is C / count. Returns
 * PEFT_OK, or an error when x's maximum is 0 or not finite, or out of memory. */
int corda_collect(const peft_site *s, const float *x, int N, peft_err *err);
/* Reads a covariance file: safetensors, one F32 [in, in] tensor per site, keyed by the site's
 * module name (PEFT's covariance_file, as a safetensors dict). Replaces stored entries. */
int corda_covariance_load(const char *path, peft_err *err);
/* Writes the store (averaged: C / count) in the format corda_covariance_load reads. */
int corda_covariance_save(const char *path, peft_err *err);
/* Forgets every collected covariance. */
void corda_covariance_clear(void);

/* When a CorDA adapter is created for a site with no stored covariance, the file named by the
 * environment variable PEFT_CORDA_COVARIANCE is loaded (once); without it, C = I (CorDA-IPM is
 * then PiSSA, CorDA-KPM the "minor components" init). */

#endif
