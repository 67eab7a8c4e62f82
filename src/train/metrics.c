/* metrics.c: accuracy and F1 (metrics.h). */
#include "train/metrics.h"

int peft_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

double peft_accuracy(const int32_t *pred, const int32_t *label, int n) {
    long hit = 0, counted = 0;
    for (int i = 0; i < n; i++)
        if (label[i] >= 0) counted++, hit += pred[i] == label[i];
    return counted ? (double)hit / (double)counted : 0.0;
}

/* Counts of class c among the counted examples; returns whether c occurs at all. */
static int class_counts(const int32_t *pred, const int32_t *label, int n, int c, long *tp, long *fp, long *fn) {
    *tp = *fp = *fn = 0;
    for (int i = 0; i < n; i++) {
        if (label[i] < 0) continue;
        int p = pred[i] == c, t = label[i] == c;
        *tp += p && t;
        *fp += p && !t;
        *fn += !p && t;
    }
    return *tp + *fp + *fn > 0;
}

double peft_f1_class(const int32_t *pred, const int32_t *label, int n, int c) {
    long tp, fp, fn;
    if (!class_counts(pred, label, n, c, &tp, &fp, &fn)) return 0.0;
    return 2.0 * (double)tp / (double)(2 * tp + fp + fn);
}

double peft_f1_macro(const int32_t *pred, const int32_t *label, int n, int n_classes) {
    double sum = 0;
    int present = 0;
    for (int c = 0; c < n_classes; c++) {
        long tp, fp, fn;
        if (!class_counts(pred, label, n, c, &tp, &fp, &fn)) continue;
        sum += peft_f1_class(pred, label, n, c);
        present++;
    }
    return present ? sum / present : 0.0;
}
