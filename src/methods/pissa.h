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
 * Training, forward and backward are LoRA's (y = x W_res^T + b + s dropout(x) A^T B^T).
 * CorDA needs the covariances of a calibration pass (peft_method_opts.corda_covs) when its
 * adapters are created, loading included: PEFT's corda_init also refuses to run without them. */
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

/* CorDA's calibration result (train/corda_calib.h collects it): for each target site, the
 * mean over calibration samples of xn^T xn, xn = x / |max(x)| the sample's input to the site
 * (PEFT's calib_cov_distribution). A CorDA adapter is created from its site's entry
 * (peft_method_opts.corda_covs); a site without one is refused. */
typedef struct peft_corda_cov {
    char name[128];  /* HF module name of the site */
    int in;          /* the site's in_features */
    long samples;    /* calibration samples averaged */
    double *C;       /* [in, in] */
} peft_corda_cov;

typedef struct peft_corda_covs {
    int n;
    peft_corda_cov *cov; /* [n] */
} peft_corda_covs;

/* The entry of site `name`, or NULL. */
const peft_corda_cov *peft_corda_covs_find(const peft_corda_covs *c, const char *name);
/* Frees the matrices and the set itself. NULL is a no-op. */
void peft_corda_covs_free(peft_corda_covs *c);

#endif
