/* driver_image.c: the C side of tests/vision/test_image_preprocess.py.
 *
 *   driver_image decode IN OUT.safetensors
 *       "rgb" U8 [H, W, 3] (and "alpha" U8 [H, W] when the file has alpha), metadata "mode"
 *   driver_image resize IN OUT.safetensors FILTER WxH [WxH ...]
 *       IN's rgb resized with PIL filter FILTER (0, 2, 3) to each size: "WxH" U8 [H, W, 3]
 *   driver_image preprocess IN preprocessor_config.json OUT.safetensors
 *       "pixel_values" F32 [3, H, W]
 *   driver_image folder DIR
 *       prints "classes N", one "class NAME" per class, "item LABEL PATH" per image, "skipped N"
 * On an error it prints the library's message on stderr and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/image_preprocess.h"
#include "io/safetensors.h"

static int fail(const peft_err *err) {
    fprintf(stderr, "%s\n", err->msg);
    return 1;
}

static int cmd_decode(const char *in, const char *out, peft_err *err) {
    peft_image img;
    if (peft_image_load(in, &img, err)) return 1;
    peft_st_entry e[2] = {
        {.name = "rgb", .dtype = PEFT_U8, .ndim = 3, .shape = {img.height, img.width, 3}, .data = img.rgb},
        {.name = "alpha", .dtype = PEFT_U8, .ndim = 2, .shape = {img.height, img.width}, .data = img.alpha}};
    const char *meta[2] = {"mode", img.mode};
    int rc = peft_st_write(out, e, img.alpha ? 2 : 1, meta, 1, err);
    peft_image_free(&img);
    return rc != PEFT_OK;
}

static int cmd_resize(const char *in, const char *out, int filter, int n, char **sizes, peft_err *err) {
    peft_image img;
    if (peft_image_load(in, &img, err)) return 1;
    peft_st_entry *e = calloc((size_t)n, sizeof *e);
    int rc = e ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; rc == PEFT_OK && i < n; i++) {
        int w, h;
        uint8_t *dst = NULL;
        if (sscanf(sizes[i], "%dx%d", &w, &h) != 2 || w <= 0 || h <= 0 || w > 4096 || h > 4096)
            rc = peft_fail(err, PEFT_EINVAL, "bad size %s (WxH)", sizes[i]);
        else if (!(dst = malloc((size_t)w * h * 3)))
            rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        else
            rc = peft_image_resize(img.rgb, img.width, img.height, dst, w, h, filter, err);
        e[i] = (peft_st_entry){.name = sizes[i], .dtype = PEFT_U8, .ndim = 3, .shape = {h, w, 3}, .data = dst};
    }
    if (rc == PEFT_OK) rc = peft_st_write(out, e, n, NULL, 0, err);
    for (int i = 0; e && i < n; i++) free((void *)e[i].data);
    free(e);
    peft_image_free(&img);
    return rc != PEFT_OK;
}

static int cmd_preprocess(const char *in, const char *config, const char *out, peft_err *err) {
    peft_image_processor p;
    peft_image img;
    if (peft_image_processor_load(config, &p, err) || peft_image_load(in, &img, err)) return 1;
    float *pv;
    int h, w;
    int rc = peft_image_preprocess(&p, &img, in, &pv, &h, &w, err);
    peft_image_free(&img);
    if (rc) return 1;
    peft_st_entry e = {.name = "pixel_values", .dtype = PEFT_F32, .ndim = 3, .shape = {3, h, w}, .data = pv};
    rc = peft_st_write(out, &e, 1, NULL, 0, err);
    free(pv);
    return rc != PEFT_OK;
}

static int cmd_folder(const char *dir, peft_err *err) {
    peft_image_folder f;
    if (peft_image_folder_list(dir, &f, err)) return 1;
    printf("classes %d\n", f.n_classes);
    for (int i = 0; i < f.n_classes; i++) printf("class %s\n", f.classes[i]);
    for (int i = 0; i < f.n_items; i++) printf("item %d %s\n", f.items[i].label, f.items[i].path);
    printf("skipped %d\n", f.n_skipped);
    peft_image_folder_free(&f);
    return 0;
}

int main(int argc, char **argv) {
    peft_err err = {0};
    int bad;
    if (argc == 4 && !strcmp(argv[1], "decode"))
        bad = cmd_decode(argv[2], argv[3], &err);
    else if (argc >= 6 && !strcmp(argv[1], "resize"))
        bad = cmd_resize(argv[2], argv[3], atoi(argv[4]), argc - 5, argv + 5, &err);
    else if (argc == 5 && !strcmp(argv[1], "preprocess"))
        bad = cmd_preprocess(argv[2], argv[3], argv[4], &err);
    else if (argc == 3 && !strcmp(argv[1], "folder"))
        bad = cmd_folder(argv[2], &err);
    else {
        fprintf(stderr, "usage: driver_image decode IN OUT | resize IN OUT FILTER WxH... | "
                        "preprocess IN CONFIG OUT | folder DIR\n");
        return 2;
    }
    return bad ? fail(&err) : 0;
}
