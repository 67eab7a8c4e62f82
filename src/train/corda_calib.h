/* corda_calib.h: CorDA's calibration pass (PEFT's preprocess_corda -> calib_cov_distribution):
 * the base model runs over calibration rows with a recording adapter at every target site,
 * which adds nothing to the output and accumulates the covariance of the site's input; the
 * CorDA adapters are then created from the mean covariances (peft_method_opts.corda_covs).
 *
 * One sample is one row of T tokens (PEFT hooks one forward call of one sequence): x [len, in]
 * is the site's input over the row's tokens, up to the end of its last packed example
 * (padding after it is left out), and the sample adds (x / |max x|)^T (x / |max x|), computed
 * in f32 as PEFT does and summed in f64. The result is the sum over samples / their number. */
#ifndef PEFT_TRAIN_CORDA_CALIB_H
#define PEFT_TRAIN_CORDA_CALIB_H

#include <stdint.h>

#include "error.h"
#include "methods/adapter_set.h"
#include "methods/pissa.h"
#include "models/model.h"
#include "train/data.h"

typedef struct peft_corda_collector peft_corda_collector;

/* Attaches a recorder to every site of m that cfg targets (none may carry an adapter yet), for
 * forwards of up to B rows of T tokens. */
int peft_corda_collect_begin(peft_model *m, const peft_adapter_config *cfg, int B, int T, peft_corda_collector **out,
                             peft_err *err);
/* One forward of the base model over ids [B, T] with a (allocated for B x T, training 0);
 * pos [B, T] as peft_batch's (NULL: plain causal rows, every token counts). rows: how many
 * of the B rows are samples (the rest are filler). Fails when a sample's input has maximum 0
 * or a non-finite value (PEFT raises there too). */
int peft_corda_collect_batch(peft_corda_collector *c, peft_acts *a, const int32_t *ids, const int32_t *pos, int rows,
                             peft_err *err);
/* Detaches the recorders, frees the collector and, when rc_so_far is PEFT_OK, returns the mean
 * covariances in *out (free with peft_corda_covs_free). Returns rc_so_far or its own error. */
int peft_corda_collect_end(peft_corda_collector *c, int rc_so_far, peft_corda_covs **out, peft_err *err);

/* The whole pass: the first n_batches * B rows of ds's training split (in the dataset's fixed
 * row order; fewer when it has fewer), B rows of T tokens per forward. */
int peft_corda_calibrate(peft_model *m, const peft_adapter_config *cfg, const peft_dataset *ds, int B, int T, int n_batches,
                         peft_corda_covs **out, peft_err *err);

#endif
