/* metrics.h: classification metrics over predicted and true class ids, as scikit-learn computes
 * them (accuracy_score, f1_score with pos_label=1 / average="macro", zero_division=0).
 * Examples whose true label is negative (unlabelled, -1) are left out of every metric. */
#ifndef PEFT_TRAIN_METRICS_H
#define PEFT_TRAIN_METRICS_H

#include <stdint.h>

/* The index of the largest of x[n] (the first on ties, as numpy's argmax). */
int peft_argmax(const float *x, int n);

/* Fraction of counted examples with pred == label; 0 when none is counted. */
double peft_accuracy(const int32_t *pred, const int32_t *label, int n);

/* F1 of class c: 2 tp / (2 tp + fp + fn), 0 when that is 0/0. Binary F1 is peft_f1_class(.., 1). */
double peft_f1_class(const int32_t *pred, const int32_t *label, int n, int c);

/* The mean of peft_f1_class over the classes that occur among the counted labels or
 * predictions (sklearn's labels=None). */
double peft_f1_macro(const int32_t *pred, const int32_t *label, int n, int n_classes);

#endif
