/* image_preprocess.h: an image processor as preprocessor_config.json describes it, computing
 * the pixel_values of transformers' PIL backend (ViTImageProcessorPil; CLIP-style configs too):
 *   convert_to_rgb (alpha composited onto white) -> resize (PIL's resampling, reproduced
 *   bit for bit on uint8) -> center crop -> rescale -> normalize -> float CHW [3, H, W].
 * docs/images.md describes each step and what was checked against transformers. */
#ifndef PEFT_IO_IMAGE_PREPROCESS_H
#define PEFT_IO_IMAGE_PREPROCESS_H

#include <stdint.h>

#include "error.h"
#include "io/image.h"

/* PIL's resampling filter numbers (Image.Resampling), as preprocessor_config.json stores them. */
enum { PEFT_RESAMPLE_NEAREST = 0, PEFT_RESAMPLE_BILINEAR = 2, PEFT_RESAMPLE_BICUBIC = 3 };

typedef struct peft_image_processor {
    int do_convert_rgb;           /* 0 (also for null / absent, as transformers): the image must be RGB */
    int do_resize;
    int height, width;            /* size {height, width}: the output size, or */
    int shortest_edge;            /* size {shortest_edge}: > 0 scales the shorter side to it */
    int resample;                 /* PEFT_RESAMPLE_* */
    int do_center_crop;
    int crop_height, crop_width;  /* crop_size */
    int do_rescale;
    double rescale_factor;
    int do_normalize;
    double image_mean[3], image_std[3];
} peft_image_processor;

/* ViTImageProcessor's defaults: 224x224 bilinear, rescale 1/255, mean = std = 0.5. */
void peft_image_processor_defaults(peft_image_processor *p);
/* Reads preprocessor_config.json; keys it lacks keep ViTImageProcessor's defaults. Options
 * peft.c does not implement (padding, longest_edge, other filters) are refused by name. */
int peft_image_processor_load(const char *path, peft_image_processor *p, peft_err *err);

/* Resizes an RGB image src [h, w, 3] to dst [oh, ow, 3] exactly as PIL's Image.resize on an
 * "RGB" image: NEAREST by PIL's affine scaling, BILINEAR / BICUBIC by its separable
 * convolution (support widened by the downscale factor, 22-bit fixed-point weights, uint8
 * rounding and clamping after the horizontal and after the vertical pass). */
int peft_image_resize(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh, int resample, peft_err *err);

/* The pixel_values of one image: *out (caller frees) is float [3, *oh, *ow]. `what` names the
 * image in messages. */
int peft_image_preprocess(const peft_image_processor *p, const peft_image *img, const char *what, float **out,
                          int *oh, int *ow, peft_err *err);

#endif
