/* driver_cls.c: the C side of tests/data/test_cls_data.py (train/cls_data.h, train/metrics.h).
 *
 *   driver_cls text FILE TOKDIR MAXLEN [N_LABELS [NAME,NAME,...]]
 *       "classes N [NAME ...]", then one JSON line per example: {"label", "ids", "type_ids"}
 *   driver_cls batch FILE TOKDIR MAXLEN T PAD ROW,ROW,...
 *       one JSON line: {"B", "T", "ids", "type_ids", "lengths", "labels"} (T 0: the longest)
 *   driver_cls images DIR PREPROC|- OUT.safetensors ROW,ROW,...
 *       "classes N NAME ...", "item LABEL PATH" per image; OUT gets "pixel_values" F32
 *       [B, 3, H, W] and "labels" I32 [B] of the rows
 *   driver_cls metrics N_CLASSES < "PRED LABEL" lines
 *       "accuracy X", "f1 X" (class 1), "macro_f1 X"
 * On an error it prints the library's message on stderr and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "train/cls_data.h"
#include "train/metrics.h"

static int fail(const peft_err *err) {
    fprintf(stderr, "%s\n", err->msg);
    return 1;
}

/* "a,b,c" -> out[] (at most max); returns the count. */
static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ",")) out[n++] = t;
    return n;
}

static void print_ints(const char *key, const int32_t *v, int64_t n, int last) {
    printf("\"%s\": [", key);
    for (int64_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", v[i]);
    printf("]%s", last ? "}\n" : ", ");
}

static void print_classes(const peft_cls_dataset *ds) {
    printf("classes %d", ds->n_classes);
    for (int i = 0; ds->classes && i < ds->n_classes; i++) printf(" %s", ds->classes[i]);
    printf("\n");
}

static int load_text(char **argv, int argc, peft_tokenizer **tok, peft_cls_dataset **ds, peft_err *err) {
    static char *names[64];
    peft_cls_opts o = {.max_len = atoi(argv[4])};
    if (argc > 5) o.n_labels = atoi(argv[5]);
    if (argc > 6) o.n_label_names = split_list(argv[6], names, 64), o.label_names = (const char *const *)names;
    if (peft_tokenizer_load(argv[3], tok, err)) return 1;
    if (peft_cls_load_text(argv[2], *tok, &o, ds, err)) return peft_tokenizer_free(*tok), 1;
    return 0;
}

static int cmd_text(int argc, char **argv, peft_err *err) {
    peft_tokenizer *tok;
    peft_cls_dataset *ds;
    if (load_text(argv, argc, &tok, &ds, err)) return 1;
    print_classes(ds);
    for (int i = 0; i < ds->n; i++) {
        int64_t o = ds->offset[i], n = ds->offset[i + 1] - o;
        printf("{\"label\": %d, ", ds->labels[i]);
        print_ints("ids", ds->tokens + o, n, 0);
        print_ints("type_ids", ds->type_ids + o, n, 1);
    }
    peft_cls_free(ds);
    peft_tokenizer_free(tok);
    return 0;
}

static int cmd_batch(char **argv, peft_err *err) {
    peft_tokenizer *tok;
    peft_cls_dataset *ds;
    if (load_text(argv, 5, &tok, &ds, err)) return 1;
    char *r[4096];
    int rows[4096], B = split_list(argv[7], r, 4096);
    for (int i = 0; i < B; i++) rows[i] = atoi(r[i]);
    peft_cls_batch bt = {0};
    int rc = peft_cls_batch_fill(ds, rows, B, atoi(argv[5]), atoi(argv[6]), &bt, err);
    if (!rc) {
        printf("{\"B\": %d, \"T\": %d, ", bt.b.B, bt.b.T);
        print_ints("ids", bt.b.ids, (int64_t)B * bt.b.T, 0);
        print_ints("type_ids", bt.b.type_ids, (int64_t)B * bt.b.T, 0);
        print_ints("lengths", bt.b.lengths, B, 0);
        print_ints("labels", bt.b.targets, B, 1);
    }
    peft_cls_batch_free(&bt);
    peft_cls_free(ds);
    peft_tokenizer_free(tok);
    return rc ? fail(err) : 0;
}

static int cmd_images(char **argv, peft_err *err) {
    peft_cls_dataset *ds;
    if (peft_cls_load_images(argv[2], strcmp(argv[3], "-") ? argv[3] : NULL, NULL, &ds, err)) return 1;
    print_classes(ds);
    for (int i = 0; i < ds->n; i++) printf("item %d %s\n", ds->labels[i], ds->image_paths[i]);
    char *r[4096];
    int rows[4096], B = split_list(argv[5], r, 4096);
    for (int i = 0; i < B; i++) rows[i] = atoi(r[i]);
    peft_cls_batch bt = {0};
    int rc = peft_cls_batch_fill(ds, rows, B, 0, 0, &bt, err);
    if (!rc) {
        peft_st_entry e[2] = {
            {.name = "pixel_values", .dtype = PEFT_F32, .ndim = 4, .shape = {B, 3, bt.height, bt.width}, .data = bt.b.pixels},
            {.name = "labels", .dtype = PEFT_I32, .ndim = 1, .shape = {B}, .data = bt.b.targets}};
        rc = peft_st_write(argv[4], e, 2, NULL, 0, err);
    }
    peft_cls_batch_free(&bt);
    peft_cls_free(ds);
    return rc ? fail(err) : 0;
}

static int cmd_metrics(int n_classes) {
    int32_t *pred = NULL, *label = NULL;
    int n = 0, cap = 0, p, l;
    while (scanf("%d %d", &p, &l) == 2) {
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            pred = realloc(pred, (size_t)cap * sizeof *pred);
            label = realloc(label, (size_t)cap * sizeof *label);
            if (!pred || !label) return fprintf(stderr, "out of memory\n"), 1;
        }
        pred[n] = p, label[n++] = l;
    }
    printf("accuracy %.17g\nf1 %.17g\nmacro_f1 %.17g\n", peft_accuracy(pred, label, n), peft_f1_class(pred, label, n, 1),
           peft_f1_macro(pred, label, n, n_classes));
    free(pred), free(label);
    return 0;
}

int main(int argc, char **argv) {
    peft_err err = {0};
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "text") && argc >= 5) return cmd_text(argc, argv, &err) ? fail(&err) : 0;
    if (!strcmp(cmd, "batch") && argc == 8) return cmd_batch(argv, &err);
    if (!strcmp(cmd, "images") && argc == 6) return cmd_images(argv, &err);
    if (!strcmp(cmd, "metrics") && argc == 3) return cmd_metrics(atoi(argv[2]));
    fprintf(stderr, "usage: see the comment at the top of driver_cls.c\n");
    return 2;
}
