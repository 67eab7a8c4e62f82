/* fuzz_image.c: libFuzzer target for the image readers: PNG / JPEG decoding from memory
 * (peft_image_decode) and preprocessor_config.json parsing (peft_image_processor_load), then
 * the pixel_values of the decoded image (peft_image_preprocess).
 * Input: an image file alone (an input starting with PNG's or JPEG's first two bytes),
 * preprocessed with three fixed processors (ViT's defaults; CLIP's shortest_edge + bicubic +
 * center crop; nearest to a non-square size), or a
 * preprocessor_config.json text, a NUL byte and an image file (preprocessed with that config).
 * Any input must give an error naming the input, or an image of 1..PEFT_IMAGE_MAX_PIXELS
 * pixels with a mode PIL names and rgb (and alpha) buffers ASan can read to the end, and a
 * config whose preprocessing fails cleanly or gives finite pixel_values of the size the config
 * states. The config is read from a file (the loader reads only files) in $TMPDIR: one small
 * write per input. Built by fuzz/run.sh. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "io/image.h"
#include "io/image_preprocess.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

/* Resizing to a huge size is legitimate but slow: configs whose output would exceed this many
 * pixels are parsed, not run. */
#define MAX_OUT_PIXELS (1 << 20)

static void check_failure(int rc, const peft_err *err, const char *what) {
    REQUIRE(rc < 0 && err->code == rc && memchr(err->msg, 0, sizeof err->msg) && strstr(err->msg, what));
}

/* The pixels the resize step produces (before the crop), in a double (they may not fit an int). */
static double resized_pixels(const peft_image_processor *p, const peft_image *img) {
    if (!p->do_resize) return (double)img->width * img->height;
    if (!p->shortest_edge) return (double)p->height * p->width;
    double shorter = img->width <= img->height ? img->width : img->height;
    double longer = img->width <= img->height ? img->height : img->width;
    return (double)p->shortest_edge * ((double)p->shortest_edge * longer / shorter);
}

static void check_preprocess(const peft_image_processor *p, const peft_image *img) {
    /* sizes past PEFT_IMAGE_MAX_PIXELS must be refused (cheaply); large legitimate ones are skipped */
    double px = resized_pixels(p, img);
    if ((px > MAX_OUT_PIXELS && px <= (double)PEFT_IMAGE_MAX_PIXELS) || (double)img->width * img->height > 4 * MAX_OUT_PIXELS)
        return;
    float *pv = NULL;
    int oh = -1, ow = -1;
    peft_err err = {0};
    int rc = peft_image_preprocess(p, img, "fuzz.png", &pv, &oh, &ow, &err);
    if (rc != PEFT_OK) {
        REQUIRE(pv == NULL);
        check_failure(rc, &err, "fuzz.png");
        return;
    }
    REQUIRE(pv && oh > 0 && ow > 0);
    if (p->do_center_crop) REQUIRE(oh == p->crop_height && ow == p->crop_width);
    else if (p->do_resize && !p->shortest_edge) REQUIRE(oh == p->height && ow == p->width);
    else if (!p->do_resize) REQUIRE(oh == img->height && ow == img->width);
    for (size_t i = 0; i < (size_t)3 * oh * ow; i++) REQUIRE(isfinite(pv[i]));
    free(pv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    const uint8_t *nul = memchr(data, 0, size);
    /* an input that starts like an image is an image alone (JPEG's APP0 holds a NUL at byte 4) */
    if (size >= 2 && (!memcmp(data, "\x89P", 2) || !memcmp(data, "\xff\xd8", 2))) nul = NULL;
    size_t cfg_len = nul ? (size_t)(nul - data) : 0, off = nul ? cfg_len + 1 : 0, len = size - off;
    peft_image_processor procs[3];
    int n_procs = 0;
    if (nul) {
        char path[256];
        const char *tmp = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/fuzz_preprocessor_config.%d.json", tmp && *tmp ? tmp : "/tmp", (int)getpid());
        FILE *f = fopen(path, "wb");
        if (!f) return 0;
        int ok = fwrite(data, 1, cfg_len, f) == cfg_len;
        if (fclose(f) || !ok) return 0;
        peft_err err = {0};
        int rc = peft_image_processor_load(path, &procs[0], &err);
        if (rc != PEFT_OK) {
            check_failure(rc, &err, path);
            return 0;
        }
        const peft_image_processor *p = &procs[0];
        REQUIRE(p->resample == PEFT_RESAMPLE_NEAREST || p->resample == PEFT_RESAMPLE_BILINEAR ||
                p->resample == PEFT_RESAMPLE_BICUBIC);
        REQUIRE(p->height >= 0 && p->width >= 0 && p->shortest_edge >= 0 && p->crop_height >= 0 && p->crop_width >= 0);
        n_procs = 1;
    } else {
        for (int i = 0; i < 3; i++) {
            peft_image_processor_defaults(&procs[i]);
            procs[i].do_convert_rgb = 1;
        }
        procs[1].shortest_edge = 32; /* CLIP-style */
        procs[1].resample = PEFT_RESAMPLE_BICUBIC;
        procs[1].do_center_crop = 1;
        procs[1].crop_height = procs[1].crop_width = 24;
        procs[2].height = 5; /* nearest, non-square, upscaling most seeds */
        procs[2].width = 40;
        procs[2].resample = PEFT_RESAMPLE_NEAREST;
        n_procs = 3;
    }
    unsigned char *buf = malloc(len ? len : 1); /* exactly sized: reads past the end are reported */
    if (!buf) return 0;
    if (len) memcpy(buf, data + off, len);
    peft_image img = {0};
    peft_err err = {0};
    int rc = peft_image_decode(buf, len, "fuzz.png", &img, &err);
    free(buf);
    if (rc != PEFT_OK) {
        REQUIRE(img.rgb == NULL && img.alpha == NULL);
        check_failure(rc, &err, "fuzz.png");
        return 0;
    }
    static const char *const MODES[] = {"1", "L", "I;16", "LA", "P", "RGB", "RGBA", "CMYK"};
    int known = 0;
    for (size_t i = 0; i < sizeof MODES / sizeof *MODES; i++) known |= img.mode && !strcmp(img.mode, MODES[i]);
    REQUIRE(known);
    REQUIRE(img.width > 0 && img.height > 0 && (long long)img.width * img.height <= PEFT_IMAGE_MAX_PIXELS);
    size_t n = (size_t)img.width * img.height;
    REQUIRE(img.rgb != NULL);
    volatile uint8_t sink = img.rgb[0] ^ img.rgb[n * 3 - 1];
    if (img.alpha) sink ^= img.alpha[0] ^ img.alpha[n - 1];
    (void)sink;
    for (int i = 0; i < n_procs; i++) check_preprocess(&procs[i], &img);
    peft_image_free(&img);
    return 0;
}
