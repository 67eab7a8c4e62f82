/* cls_eval.c: batched classification inference (cls_eval.h). */
#include "train/cls_eval.h"

#include <math.h>
#include <stdlib.h>

#include "train/metrics.h"

int peft_cls_predict(peft_model *m, peft_adapter_set *set, const peft_cls_dataset *ds, int B, double *probs, int32_t *pred,
                     peft_err *err) {
    const int NL = m->info.n_labels;
    if (m->info.task == PEFT_TASK_CAUSAL_LM || NL < 1)
        return peft_fail(err, PEFT_EINVAL, "%s: loaded for causal-lm, not a classification task", m->dir);
    if (B > ds->n) B = ds->n;
    /* text: T = the longest example; images: the model's own token count (acts_alloc ignores T) */
    int T = ds->max_tokens > 0 ? ds->max_tokens : 1, pad = m->info.pad_token_id >= 0 ? m->info.pad_token_id : 0;
    peft_acts *acts = NULL;
    peft_cls_batch bt = {0};
    int *rows = malloc((size_t)B * sizeof *rows);
    int rc = rows ? peft_model_acts_alloc(m, B, T, 0, 0, &acts, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK && set) rc = peft_adapter_set_reserve(set, B * (T > m->info.max_positions ? T : m->info.max_positions), err);
    if (set) peft_adapter_set_mode(set, 0, 0);
    for (int r0 = 0; rc == PEFT_OK && r0 < ds->n; r0 += B) {
        int n = ds->n - r0 < B ? ds->n - r0 : B;
        for (int b = 0; b < n; b++) rows[b] = r0 + b;
        rc = peft_cls_batch_fill(ds, rows, n, 0, pad, &bt, err);
        peft_batch batch = bt.b;
        batch.targets = NULL; /* the logits, not the loss */
        double unused_loss;
        int unused_count;
        if (rc == PEFT_OK) rc = peft_model_forward(m, acts, &batch, &unused_loss, &unused_count, err);
        const float *logits = rc == PEFT_OK ? peft_model_outputs(m, acts) : NULL;
        for (int b = 0; b < n && logits; b++) {
            const float *z = logits + (size_t)b * NL;
            double *p = probs + (size_t)(r0 + b) * NL, sum = 0;
            int k = peft_argmax(z, NL);
            for (int c = 0; c < NL; c++) sum += p[c] = exp((double)z[c] - (double)z[k]);
            for (int c = 0; c < NL; c++) p[c] /= sum;
            pred[r0 + b] = k;
        }
    }
    peft_cls_batch_free(&bt);
    peft_model_acts_free(m, acts);
    free(rows);
    return rc;
}
