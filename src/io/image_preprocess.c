/* image_preprocess.c: preprocessor_config.json and the pixel_values of transformers' PIL
 * backend. The resize is our own C for Pillow's algorithm (libImaging/Resample.c and the
 * affine NEAREST scaling of Geometry.c), reproduced operation for operation: one uint8 step
 * is 7.8e-3 after normalising by std 0.5, so matching transformers to 1e-3 needs PIL's
 * pixels exactly, not a better resampler. */

/* Pillow is compiled without fused multiply-add; a contracted a*b+c rounds differently and
 * moves a weight across a fixed-point rounding boundary now and then. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "io/image_preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

void peft_image_processor_defaults(peft_image_processor *p) {
    *p = (peft_image_processor){
        .do_resize = 1, .height = 224, .width = 224, .resample = PEFT_RESAMPLE_BILINEAR,
        .crop_height = 224, .crop_width = 224, .do_rescale = 1, .rescale_factor = 1.0 / 255.0,
        .do_normalize = 1, .image_mean = {0.5, 0.5, 0.5}, .image_std = {0.5, 0.5, 0.5}};
}

/* ---- preprocessor_config.json ---- */

/* "size" / "crop_size": {height, width}, {shortest_edge} (only where allowed), or an int
 * (transformers' get_size_dict makes it a square for ViT). */
static int read_size(const cJSON *cfg, const char *key, int allow_shortest, int *h, int *w, int *shortest,
                     const char *what, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) return PEFT_OK;
    long long a = 0, b = 0, s = 0;
    int rc = PEFT_OK;
    if (cJSON_IsNumber(v)) {
        rc = peft_json_int(cfg, key, 1, &a, what, err);
        b = a;
    } else if (cJSON_IsObject(v)) {
        for (const cJSON *e = v->child; e; e = e->next)
            if (strcmp(e->string, "height") && strcmp(e->string, "width") &&
                !(allow_shortest && !strcmp(e->string, "shortest_edge")))
                return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"%s\": \"%s\" is not supported by peft.c", what, key,
                                 e->string);
        if (!rc) rc = peft_json_int(v, "height", 0, &a, what, err);
        if (!rc) rc = peft_json_int(v, "width", 0, &b, what, err);
        if (!rc) rc = peft_json_int(v, "shortest_edge", 0, &s, what, err);
        if (!rc && !s && (!a || !b))
            rc = peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" needs height and width%s", what, key,
                           allow_shortest ? ", or shortest_edge" : "");
    } else {
        rc = peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must be an object or an integer", what, key);
    }
    if (rc) return rc;
    if (a < 0 || b < 0 || s < 0 || a > 65535 || b > 65535 || s > 65535)
        return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" is out of range (0..65535)", what, key);
    if (s) {
        *shortest = (int)s;
    } else {
        *h = (int)a;
        *w = (int)b;
        if (shortest) *shortest = 0;
    }
    return PEFT_OK;
}

/* "image_mean" / "image_std": one number for every channel, or three. */
static int read_triple(const cJSON *cfg, const char *key, double out[3], const char *what, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) return PEFT_OK;
    if (cJSON_IsNumber(v)) {
        out[0] = out[1] = out[2] = v->valuedouble;
        return PEFT_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3)
        return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must be a number or a list of 3 numbers (RGB)", what, key);
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e)) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\"[%d] must be a number", what, key, i);
        out[i] = e->valuedouble;
    }
    return PEFT_OK;
}

int peft_image_processor_load(const char *path, peft_image_processor *p, peft_err *err) {
    peft_image_processor_defaults(p);
    cJSON *cfg;
    int rc = peft_json_load(path, &cfg, err);
    if (rc) return rc;
    long long resample = p->resample;
    int do_pad = 0;
    if (!rc) rc = peft_json_bool(cfg, "do_convert_rgb", 0, &p->do_convert_rgb, path, err);
    if (!rc) rc = peft_json_bool(cfg, "do_resize", 0, &p->do_resize, path, err);
    if (!rc) rc = read_size(cfg, "size", 1, &p->height, &p->width, &p->shortest_edge, path, err);
    if (!rc) rc = peft_json_int(cfg, "resample", 0, &resample, path, err);
    if (!rc) rc = peft_json_bool(cfg, "do_center_crop", 0, &p->do_center_crop, path, err);
    if (!rc) rc = read_size(cfg, "crop_size", 0, &p->crop_height, &p->crop_width, NULL, path, err);
    if (!rc) rc = peft_json_bool(cfg, "do_rescale", 0, &p->do_rescale, path, err);
    if (!rc) rc = peft_json_double(cfg, "rescale_factor", 0, &p->rescale_factor, path, err);
    if (!rc) rc = peft_json_bool(cfg, "do_normalize", 0, &p->do_normalize, path, err);
    if (!rc) rc = read_triple(cfg, "image_mean", p->image_mean, path, err);
    if (!rc) rc = read_triple(cfg, "image_std", p->image_std, path, err);
    if (!rc) rc = peft_json_bool(cfg, "do_pad", 0, &do_pad, path, err);
    cJSON_Delete(cfg);
    if (rc) return rc;
    if (do_pad) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"do_pad\": true is not supported by peft.c", path);
    if (resample != PEFT_RESAMPLE_NEAREST && resample != PEFT_RESAMPLE_BILINEAR && resample != PEFT_RESAMPLE_BICUBIC)
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: \"resample\": %lld is not supported (0 nearest, 2 bilinear, 3 bicubic)", path, resample);
    p->resample = (int)resample;
    for (int c = 0; c < 3; c++) {
        if (p->do_normalize && !((float)p->image_std[c] != 0.0f))
            return peft_fail(err, PEFT_EFORMAT, "%s: \"image_std\"[%d] must not be 0 (as a float32)", path, c);
        /* pixel_values are monotone in the pixel value, so they are finite when those of 0 and
         * 255 are: computed here exactly as peft_image_preprocess does (float32) */
        for (int v = 0; v <= 255; v += 255) {
            float f = p->do_rescale ? (float)(v * p->rescale_factor) : (float)v;
            if (p->do_normalize) f = (f - (float)p->image_mean[c]) / (float)p->image_std[c];
            if (!isfinite(f))
                return peft_fail(err, PEFT_EFORMAT,
                                 "%s: \"rescale_factor\", \"image_mean\"[%d] and \"image_std\"[%d] give a "
                                 "non-finite pixel value for %d",
                                 path, c, c, v);
        }
    }
    return PEFT_OK;
}

/* ---- resize (Pillow's algorithm) ---- */

static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Keys' cubic convolution with a = -0.5, in Pillow's evaluation order. */
static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's fixed point: weights scaled by 2^22, leaving 8 bits for the value and 2 for
 * weights that sum above 1 or go negative. */
#define RS_PRECISION_BITS 22

/* The taps of one axis: out pixel i reads in[bounds[2i] .. bounds[2i] + bounds[2i+1]) with
 * weights kk[i * ksize ...]. The support widens with the downscale factor (antialiasing). */
typedef struct rs_axis {
    int ksize;
    int *bounds;    /* [out, 2] first tap, tap count */
    int32_t *kk;    /* [out, ksize] fixed-point weights */
} rs_axis;

static int rs_axis_init(rs_axis *a, int in, int out, double (*filter)(double), double support0) {
    double scale = (double)in / out, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support0 * filterscale;
    a->ksize = (int)ceil(support) * 2 + 1;
    a->bounds = malloc((size_t)out * 2 * sizeof *a->bounds);
    a->kk = malloc((size_t)out * a->ksize * sizeof *a->kk);
    double *k = malloc((size_t)a->ksize * sizeof *k);
    if (!a->bounds || !a->kk || !k) {
        free(k);
        return PEFT_ENOMEM;
    }
    for (int i = 0; i < out; i++) {
        double center = (i + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            k[x] = filter((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        int32_t *q = a->kk + (size_t)i * a->ksize;
        for (int x = 0; x < a->ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            q[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << RS_PRECISION_BITS) : 0.5 + v * (1 << RS_PRECISION_BITS));
        }
        a->bounds[2 * i] = xmin;
        a->bounds[2 * i + 1] = xmax;
    }
    free(k);
    return PEFT_OK;
}

static void rs_axis_free(rs_axis *a) {
    free(a->bounds);
    free(a->kk);
}

static uint8_t rs_clip8(int32_t v) {
    v >>= RS_PRECISION_BITS; /* arithmetic shift, as Pillow's lookup index */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One pass over RGB pixels: out[o, j] = sum_t in[o, first_j + t] * kk[j, t], where a "pixel"
 * of the pass is 3 bytes at stride `step` along the axis and rows are `lines` apart. */
static void rs_pass(const uint8_t *in, uint8_t *out, const rs_axis *a, int n_out, int n_lines, size_t in_step,
                    size_t in_line, size_t out_step, size_t out_line, int line0) {
    for (int l = 0; l < n_lines; l++) {
        const uint8_t *src = in + (size_t)(l + line0) * in_line;
        for (int j = 0; j < n_out; j++) {
            const int32_t *k = a->kk + (size_t)j * a->ksize;
            const uint8_t *p = src + (size_t)a->bounds[2 * j] * in_step;
            int32_t s0 = 1 << (RS_PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int t = 0; t < a->bounds[2 * j + 1]; t++, p += in_step) {
                s0 += p[0] * k[t];
                s1 += p[1] * k[t];
                s2 += p[2] * k[t];
            }
            uint8_t *q = out + (size_t)l * out_line + (size_t)j * out_step;
            q[0] = rs_clip8(s0);
            q[1] = rs_clip8(s1);
            q[2] = rs_clip8(s2);
        }
    }
}

/* The horizontal pass: rows [row0, row0 + rows) of in [*, w] -> out [rows, ow]. */
static void rs_horizontal(const uint8_t *in, int w, uint8_t *out, int ow, const rs_axis *ax, int row0, int rows) {
    rs_pass(in, out, ax, ow, rows, 3, (size_t)w * 3, 3, (size_t)ow * 3, row0);
}

/* The vertical pass: in [*, w] (rows as ay's bounds number them) -> out [oh, w]. */
static void rs_vertical(const uint8_t *in, int w, uint8_t *out, int oh, const rs_axis *ay) {
    rs_pass(in, out, ay, oh, w, (size_t)w * 3, 3, (size_t)w * 3, 3, 0);
}

/* Pillow's NEAREST (ImagingScaleAffine): source coordinates accumulated in double from half
 * a step, truncated. */
static int resize_nearest(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh) {
    int *xin = malloc((size_t)ow * sizeof *xin);
    if (!xin) return PEFT_ENOMEM;
    double ax = (double)w / ow, ay = (double)h / oh, xo = ax * 0.5, yo = ay * 0.5;
    for (int x = 0; x < ow; x++, xo += ax) xin[x] = (int)xo < w ? (int)xo : w - 1;
    for (int y = 0; y < oh; y++, yo += ay) {
        int yi = (int)yo < h ? (int)yo : h - 1;
        for (int x = 0; x < ow; x++) memcpy(dst + ((size_t)y * ow + x) * 3, src + ((size_t)yi * w + xin[x]) * 3, 3);
    }
    free(xin);
    return PEFT_OK;
}

int peft_image_resize(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh, int resample, peft_err *err) {
    if (w <= 0 || h <= 0 || ow <= 0 || oh <= 0)
        return peft_fail(err, PEFT_EINVAL, "resize: sizes must be positive (%dx%d -> %dx%d)", w, h, ow, oh);
    if (ow == w && oh == h) { /* PIL returns a copy */
        memcpy(dst, src, (size_t)w * h * 3);
        return PEFT_OK;
    }
    if (resample == PEFT_RESAMPLE_NEAREST)
        return resize_nearest(src, w, h, dst, ow, oh) ? peft_fail(err, PEFT_ENOMEM, "resize: out of memory") : PEFT_OK;
    double (*filter)(double) = resample == PEFT_RESAMPLE_BILINEAR ? filter_bilinear
                               : resample == PEFT_RESAMPLE_BICUBIC ? filter_bicubic
                                                                   : NULL;
    if (!filter) return peft_fail(err, PEFT_EUNSUPPORTED, "resize: resampling filter %d is not supported", resample);
    double support = resample == PEFT_RESAMPLE_BICUBIC ? 2.0 : 1.0;
    rs_axis ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    int rc = rs_axis_init(&ax, w, ow, filter, support) || rs_axis_init(&ay, h, oh, filter, support) ? PEFT_ENOMEM : PEFT_OK;
    /* Pillow 13 (PR #9549) runs the vertical pass first when the height shrinks by more than
     * twice as many pixels as the width; the order changes the uint8 rounding between the
     * passes, so it is part of the result (rule measured against Pillow 13.0.0, see
     * docs/images.md). */
    int vertical_first = oh < h && h - oh > 2 * (w - ow);
    if (rc == PEFT_OK && ow == w) {
        rs_vertical(src, w, dst, oh, &ay);
    } else if (rc == PEFT_OK && oh == h) {
        rs_horizontal(src, w, dst, ow, &ax, 0, h);
    } else if (rc == PEFT_OK && vertical_first) {
        if (!(tmp = malloc((size_t)oh * w * 3))) {
            rc = PEFT_ENOMEM;
        } else { /* src [h, w] -> tmp [oh, w] -> dst [oh, ow] */
            rs_vertical(src, w, tmp, oh, &ay);
            rs_horizontal(tmp, w, dst, ow, &ax, 0, oh);
        }
    } else if (rc == PEFT_OK) {
        /* Horizontal pass on the source rows the vertical pass reads: [y0, y1) -> tmp [y1 - y0, ow]. */
        int y0 = ay.bounds[0], y1 = ay.bounds[2 * (oh - 1)] + ay.bounds[2 * (oh - 1) + 1];
        if (!(tmp = malloc((size_t)(y1 - y0) * ow * 3))) {
            rc = PEFT_ENOMEM;
        } else {
            rs_horizontal(src, w, tmp, ow, &ax, y0, y1 - y0);
            for (int i = 0; i < oh; i++) ay.bounds[2 * i] -= y0;
            rs_vertical(tmp, ow, dst, oh, &ay);
        }
    }
    free(tmp);
    rs_axis_free(&ax);
    rs_axis_free(&ay);
    return rc ? peft_fail(err, rc, "resize %dx%d -> %dx%d: out of memory", w, h, ow, oh) : PEFT_OK;
}

/* ---- pixel_values ---- */

/* PIL's alpha_composite of the image over opaque white, then convert("RGB"): with an opaque
 * background the weights are exactly a*128 and (255-a)*128 (7-bit precision), and the result
 * is divided by 255 with Pillow's rounding shift. */
static uint8_t over_white(uint8_t v, uint8_t a) {
    if (a == 0) return 255;
    uint32_t t = (uint32_t)v * a * 128 + 255u * (255u - a) * 128 + (0x80u << 7);
    return (uint8_t)((((t >> 8) + t) >> 8) >> 7);
}

int peft_image_preprocess(const peft_image_processor *p, const peft_image *img, const char *what, float **out,
                          int *oh, int *ow, peft_err *err) {
    *out = NULL;
    if (!p->do_convert_rgb && strcmp(img->mode, "RGB"))
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: a %s image needs \"do_convert_rgb\": true in the image processor's config "
                         "(transformers refuses it too)",
                         what, img->mode);
    int w = img->width, h = img->height;
    size_t n = (size_t)w * h;
    uint8_t *rgb = malloc(n * 3), *res = NULL;
    if (!rgb) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    for (size_t i = 0; i < n * 3; i++) /* alpha only matters when converting; RGB + tRNS keeps its pixels */
        rgb[i] = p->do_convert_rgb && img->alpha ? over_white(img->rgb[i], img->alpha[i / 3]) : img->rgb[i];
    int rh = h, rw = w, rc = PEFT_OK;
    if (p->do_resize) {
        double oh = p->height, ow = p->width; /* the output size, in a double: it may not fit an int */
        if (p->shortest_edge) { /* get_resize_output_image_size(default_to_square=False) */
            int s = p->shortest_edge, shorter = w <= h ? w : h, longer = w <= h ? h : w;
            double nl = (double)s * longer / shorter;
            ow = w <= h ? s : nl;
            oh = w <= h ? nl : s;
        }
        if (oh * ow > (double)PEFT_IMAGE_MAX_PIXELS) { /* PIL's decompression-bomb limit, also for the output */
            free(rgb);
            return peft_fail(err, PEFT_EUNSUPPORTED, "%s: resizing %dx%d to %.0fx%.0f gives more than %lld pixels", what, w,
                             h, ow, oh, PEFT_IMAGE_MAX_PIXELS);
        }
        rh = (int)oh;
        rw = (int)ow;
        res = malloc((size_t)rh * rw * 3);
        rc = res ? peft_image_resize(rgb, w, h, res, rw, rh, p->resample, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
        if (rc) peft_err_prefix(err, "%s: ", what);
        free(rgb);
        rgb = res;
    }
    int y0 = 0, x0 = 0, fh = rh, fw = rw;
    if (rc == PEFT_OK && p->do_center_crop) {
        if (p->crop_height > rh || p->crop_width > rw)
            rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: center crop %dx%d of a %dx%d image would pad (not supported)",
                           what, p->crop_width, p->crop_height, rw, rh);
        y0 = (rh - p->crop_height) / 2;
        x0 = (rw - p->crop_width) / 2;
        fh = p->crop_height;
        fw = p->crop_width;
    }
    float *pv = rc ? NULL : malloc((size_t)3 * fh * fw * sizeof *pv);
    if (rc == PEFT_OK && !pv) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    for (int c = 0; rc == PEFT_OK && c < 3; c++) {
        /* transformers: float64 * rescale_factor cast to float32, then float32 (x - mean) / std */
        float mean = (float)p->image_mean[c], std = (float)p->image_std[c];
        for (int y = 0; y < fh; y++)
            for (int x = 0; x < fw; x++) {
                uint8_t v = rgb[((size_t)(y + y0) * rw + x + x0) * 3 + c];
                float f = p->do_rescale ? (float)(v * p->rescale_factor) : (float)v;
                pv[((size_t)c * fh + y) * fw + x] = p->do_normalize ? (f - mean) / std : f;
            }
    }
    free(rgb);
    if (rc) {
        free(pv);
        return rc;
    }
    *out = pv;
    *oh = fh;
    *ow = fw;
    return PEFT_OK;
}
