/* cls_eval.h: running a classification model (seq-cls, image-cls) over a dataset: the class
 * probabilities of every example, which `peft eval` turns into metrics and `peft predict`
 * writes out. */
#ifndef PEFT_TRAIN_CLS_EVAL_H
#define PEFT_TRAIN_CLS_EVAL_H

#include "methods/adapter_set.h"
#include "models/model.h"
#include "train/cls_data.h"

/* Forward over ds in batches of up to B examples (in order, each padded to its batch's longest)
 * with set's adapters in inference mode (set may be NULL); writes probs[ds->n, n_labels] (the
 * softmax of the logits, computed in double) and pred[ds->n] (the argmax of the logits, the
 * first on ties as numpy's). */
int peft_cls_predict(peft_model *m, peft_adapter_set *set, const peft_cls_dataset *ds, int B, double *probs, int32_t *pred,
                     peft_err *err);

#endif
