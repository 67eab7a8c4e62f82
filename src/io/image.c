/* image.c: PNG (libpng) and JPEG (libjpeg-turbo) decoding to Pillow's RGB, and ImageFolder
 * listing. Both libraries report fatal errors by calling an error handler that must not
 * return: ours copy the message into a context and longjmp back, as their manuals document, so
 * a corrupt file is an error naming the file, never an exit() or a crash. Everything a decoder
 * allocates lives in a context owned by the caller of the setjmp function, so it can be freed
 * after the jump. */
#include "io/image.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "fileio.h"

void peft_image_free(peft_image *img) {
    if (!img) return;
    free(img->rgb);
    free(img->alpha);
    memset(img, 0, sizeof *img);
}

/* Checks the header's dimensions and allocates rgb (and alpha). */
static int image_alloc(peft_image *img, long long w, long long h, int with_alpha, const char *what,
                       peft_err *err) {
    if (w <= 0 || h <= 0) return peft_fail(err, PEFT_EFORMAT, "%s: image of %lldx%lld pixels", what, w, h);
    if (w > PEFT_IMAGE_MAX_PIXELS / h)
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: %lldx%lld pixels is more than %lld (refused as a decompression bomb, as PIL does)",
                         what, w, h, PEFT_IMAGE_MAX_PIXELS);
    img->width = (int)w;
    img->height = (int)h;
    img->rgb = malloc((size_t)(w * h * 3));
    img->alpha = with_alpha ? malloc((size_t)(w * h)) : NULL;
    if (!img->rgb || (with_alpha && !img->alpha)) {
        peft_image_free(img);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory for %lldx%lld pixels", what, w, h);
    }
    return PEFT_OK;
}

/* ---- PNG ---- */

typedef struct png_ctx {
    const unsigned char *data;
    size_t len, pos;
    char msg[256];
    png_structp png;
    png_infop info;
    unsigned char *buf; /* [height, rowbytes] decoded rows */
    png_bytep *rows;    /* [height] pointers into buf */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* PIL ignores what libpng warns about (bad ancillary chunks, bad gamma) */
}

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "file is truncated");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

/* Decodes into c->buf with libpng's transforms chosen so that every row is 8-bit G, GA, RGB
 * or RGBA, except 16-bit gray without alpha channel, kept as 16-bit (PIL's I;16, which clamps
 * rather than scales), and allocates img from the header. Returns 0 (with *rc), or 1 after a
 * libpng error (message in c->msg). */
static int png_decode_rows(png_ctx *c, peft_image *img, int *channels, int *depth, const char *what, peft_err *err,
                           int *rc) {
    if (setjmp(png_jmpbuf(c->png))) return 1;
    png_set_read_fn(c->png, c, png_read_mem);
    png_read_info(c->png, c->info);
    png_uint_32 w, h;
    int bit_depth, color_type;
    png_get_IHDR(c->png, c->info, &w, &h, &bit_depth, &color_type, NULL, NULL, NULL);
    png_set_expand(c->png); /* palette -> RGB, 1/2/4-bit gray -> 8-bit, tRNS -> alpha */
    if (bit_depth == 16 && color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(c->png); /* high byte */
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    *channels = png_get_channels(c->png, c->info);
    *depth = png_get_bit_depth(c->png, c->info);
    *rc = image_alloc(img, w, h, *channels == 2 || *channels == 4, what, err);
    if (*rc) return 0;
    static const char *const gray_mode[17] = {[1] = "1", [2] = "L", [4] = "L", [8] = "L", [16] = "I;16"};
    switch (color_type) {
    case PNG_COLOR_TYPE_PALETTE: img->mode = "P"; break;
    case PNG_COLOR_TYPE_GRAY: img->mode = gray_mode[bit_depth]; break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: img->mode = bit_depth == 16 ? "RGBA" : "LA"; break; /* PIL's choice */
    case PNG_COLOR_TYPE_RGB_ALPHA: img->mode = "RGBA"; break;
    default: img->mode = "RGB";
    }
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    c->buf = malloc(rowbytes * h); /* <= 8 bytes per pixel, pixel count bounded above */
    c->rows = malloc(h * sizeof *c->rows);
    if (!c->buf || !c->rows) {
        *rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory for %ux%u pixels", what, (unsigned)w, (unsigned)h);
        return 0;
    }
    for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->buf + y * rowbytes;
    png_read_image(c->png, c->rows);
    png_read_end(c->png, NULL);
    return 0;
}

static int png_decode(const unsigned char *data, size_t len, const char *what, peft_image *img, peft_err *err) {
    png_ctx c = {.data = data, .len = len};
    c.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
    c.info = c.png ? png_create_info_struct(c.png) : NULL;
    if (!c.info) {
        png_destroy_read_struct(c.png ? &c.png : NULL, NULL, NULL);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory (libpng)", what);
    }
    int channels = 0, depth = 0, rc = PEFT_OK;
    if (png_decode_rows(&c, img, &channels, &depth, what, err, &rc))
        rc = peft_fail(err, PEFT_EFORMAT, "%s: corrupt PNG: %s", what, c.msg);
    size_t n = rc ? 0 : (size_t)img->width * img->height, stride = (size_t)channels * (depth / 8);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = c.buf + i * stride;
        unsigned char *q = img->rgb + 3 * i;
        if (depth == 16) { /* gray, big-endian; gray+alpha when a tRNS chunk was expanded */
            unsigned v = (unsigned)p[0] << 8 | p[1];
            q[0] = q[1] = q[2] = v > 255 ? 255 : (unsigned char)v;
            if (img->alpha) img->alpha[i] = p[2];
        } else if (channels <= 2) {
            q[0] = q[1] = q[2] = p[0];
            if (img->alpha) img->alpha[i] = p[1];
        } else {
            memcpy(q, p, 3);
            if (img->alpha) img->alpha[i] = p[3];
        }
    }
    png_destroy_read_struct(&c.png, &c.info, NULL);
    free(c.buf);
    free(c.rows);
    if (rc) peft_image_free(img);
    return rc;
}

/* ---- JPEG ---- */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us &pub */
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
    struct jpeg_decompress_struct ci;
    unsigned char *row; /* [width * components] one scanline */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr ci) {
    jpeg_ctx *c = (jpeg_ctx *)ci->err;
    ci->err->format_message(ci, c->msg);
    longjmp(c->jump, 1);
}

/* libjpeg only warns when the data ends early (it pads with gray); PIL refuses such a file
 * ("image file is truncated"), so do we. Other warnings (extraneous bytes) PIL ignores. */
static void jpeg_on_message(j_common_ptr ci, int level) {
    jpeg_ctx *c = (jpeg_ctx *)ci->err;
    if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF) c->truncated = 1;
}

/* PIL's CMYK -> RGB (Convert.c cmyk2rgb): R = (255 - K) - C * (255 - K) / 255, rounded. */
static unsigned char cmyk_channel(unsigned c, unsigned nk) {
    unsigned t = c * nk + 128;
    return (unsigned char)(nk - (((t >> 8) + t) >> 8));
}

/* Returns 0, or 1 after a libjpeg error (message in c->msg). */
static int jpeg_decode_rows(jpeg_ctx *c, const unsigned char *data, size_t len, peft_image *img, const char *what,
                            peft_err *err, int *rc) {
    if (setjmp(c->jump)) return 1;
    jpeg_create_decompress(&c->ci);
    jpeg_mem_src(&c->ci, data, (unsigned long)len);
    jpeg_read_header(&c->ci, TRUE);
    int cmyk = c->ci.jpeg_color_space == JCS_CMYK || c->ci.jpeg_color_space == JCS_YCCK;
    int gray = c->ci.jpeg_color_space == JCS_GRAYSCALE;
    c->ci.out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
    *rc = image_alloc(img, c->ci.image_width, c->ci.image_height, 0, what, err);
    if (*rc) return 0;
    img->mode = cmyk ? "CMYK" : gray ? "L" : "RGB";
    jpeg_start_decompress(&c->ci);
    int nc = c->ci.output_components, w = img->width;
    c->row = malloc((size_t)w * nc);
    if (!c->row) {
        *rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
        return 0;
    }
    while (c->ci.output_scanline < c->ci.output_height) {
        unsigned char *q = img->rgb + (size_t)c->ci.output_scanline * w * 3;
        JSAMPROW rows[1] = {c->row};
        jpeg_read_scanlines(&c->ci, rows, 1);
        for (int x = 0; x < w; x++, q += 3) {
            const unsigned char *p = c->row + (size_t)x * nc;
            if (nc == 1) {
                q[0] = q[1] = q[2] = p[0];
            } else if (nc == 3) {
                memcpy(q, p, 3);
            } else { /* PIL reads CMYK JPEGs with Adobe's inverted polarity ("CMYK;I") */
                unsigned nk = p[3];
                for (int k = 0; k < 3; k++) q[k] = cmyk_channel(255u - p[k], nk);
            }
        }
    }
    jpeg_finish_decompress(&c->ci);
    return 0;
}

static int jpeg_decode(const unsigned char *data, size_t len, const char *what, peft_image *img, peft_err *err) {
    jpeg_ctx *c = calloc(1, sizeof *c);
    if (!c) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    c->ci.err = jpeg_std_error(&c->pub);
    c->pub.error_exit = jpeg_on_error;
    c->pub.emit_message = jpeg_on_message;
    int rc = PEFT_OK;
    if (jpeg_decode_rows(c, data, len, img, what, err, &rc))
        rc = peft_fail(err, PEFT_EFORMAT, "%s: corrupt JPEG: %s", what, c->msg);
    else if (rc == PEFT_OK && c->truncated)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: corrupt JPEG: the file is truncated", what);
    jpeg_destroy_decompress(&c->ci);
    free(c->row);
    free(c);
    if (rc) peft_image_free(img);
    return rc;
}

int peft_image_decode(const unsigned char *data, size_t len, const char *what, peft_image *img, peft_err *err) {
    memset(img, 0, sizeof *img);
    static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 8 && memcmp(data, png_magic, 8) == 0) return png_decode(data, len, what, img, err);
    if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) return jpeg_decode(data, len, what, img, err);
    return peft_fail(err, PEFT_EUNSUPPORTED, "%s: not a PNG or JPEG file (peft.c decodes only these two formats)", what);
}

int peft_image_load(const char *path, peft_image *img, peft_err *err) {
    memset(img, 0, sizeof *img);
    char *data;
    size_t len;
    int rc = peft_read_file(path, &data, &len, err);
    if (rc) return rc;
    rc = peft_image_decode((const unsigned char *)data, len, path, img, err);
    free(data);
    return rc;
}

/* ---- ImageFolder ---- */

typedef struct name_list {
    char **v;
    int n, cap;
} name_list;

static int names_push(name_list *l, char *s) {
    if (!s) return PEFT_ENOMEM;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) {
            free(s);
            return PEFT_ENOMEM;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return PEFT_OK;
}

static void names_free(name_list *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (s) {
        memcpy(s, a, la);
        s[la] = '/';
        memcpy(s + la + 1, b, lb + 1);
    }
    return s;
}

/* The entries of `dir` (not . and ..), sorted; *dirs gets the sub-directories (symlinks
 * followed, as os.walk(followlinks=True) and os.scandir's is_dir do), *files the rest. */
static int list_dir(const char *dir, name_list *dirs, name_list *files, peft_err *err) {
    DIR *d = opendir(dir);
    if (!d) return peft_fail(err, PEFT_EIO, "%s: cannot open the directory", dir);
    int rc = PEFT_OK;
    struct dirent *e;
    while (rc == PEFT_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *full = path_join(dir, e->d_name);
        struct stat st;
        int is_dir = full && stat(full, &st) == 0 && S_ISDIR(st.st_mode);
        free(full);
        if (is_dir || files) rc = names_push(is_dir ? dirs : files, strdup(e->d_name));
    }
    closedir(d);
    if (rc) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory listing the directory", dir);
    if (dirs->n > 1) qsort(dirs->v, (size_t)dirs->n, sizeof *dirs->v, cmp_str);
    if (files && files->n > 1) qsort(files->v, (size_t)files->n, sizeof *files->v, cmp_str);
    return PEFT_OK;
}

static const char *const k_image_ext[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};

/* 2 when peft.c decodes the extension, 1 for torchvision's other image extensions, else 0. */
static int image_ext_kind(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof k_image_ext / sizeof *k_image_ext; i++) {
        size_t m = strlen(k_image_ext[i]);
        if (n >= m && strcasecmp(name + n - m, k_image_ext[i]) == 0) return i < 3 ? 2 : 1;
    }
    return 0;
}

/* Appends the image files under `dir` (recursively) with `label`. os.walk's order after
 * sorted(): directories by full path, each directory's files by name. Collecting every
 * directory first and sorting their paths reproduces it (a/b sorts after a and before a0). */
static int walk_class(const char *root, int label, peft_image_folder *f, int *cap, peft_err *err) {
    name_list todo = {0}, all = {0};
    int rc = names_push(&todo, strdup(root)) ? peft_fail(err, PEFT_ENOMEM, "out of memory") : PEFT_OK;
    while (rc == PEFT_OK && todo.n > 0) { /* every directory below root */
        char *d = todo.v[--todo.n];
        if (all.n > 100000) {
            free(d);
            rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: more than 100000 directories (a symlink loop?)", root);
            break;
        }
        if (names_push(&all, d)) {
            rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
            break;
        }
        name_list sub = {0};
        rc = list_dir(d, &sub, NULL, err);
        for (int i = 0; rc == PEFT_OK && i < sub.n; i++)
            if (names_push(&todo, path_join(d, sub.v[i]))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        names_free(&sub);
    }
    if (all.n > 1) qsort(all.v, (size_t)all.n, sizeof *all.v, cmp_str);
    int found = 0;
    for (int i = 0; rc == PEFT_OK && i < all.n; i++) {
        name_list sub = {0}, files = {0};
        rc = list_dir(all.v[i], &sub, &files, err);
        for (int j = 0; rc == PEFT_OK && j < files.n; j++) {
            int kind = image_ext_kind(files.v[j]);
            char *path = path_join(all.v[i], files.v[j]);
            if (!path) {
                rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
            } else if (kind == 0) {
                f->n_skipped++;
                free(path);
            } else if (kind == 1) {
                rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: peft.c decodes only PNG and JPEG images", path);
                free(path);
            } else {
                if (f->n_items == *cap) {
                    int nc = *cap ? 2 * *cap : 64;
                    peft_image_item *v = realloc(f->items, (size_t)nc * sizeof *v);
                    if (!v) {
                        free(path);
                        rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
                        break;
                    }
                    f->items = v;
                    *cap = nc;
                }
                f->items[f->n_items++] = (peft_image_item){.path = path, .label = label};
                found++;
            }
        }
        names_free(&sub);
        names_free(&files);
    }
    if (rc == PEFT_OK && !found)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: no image file in this class folder (torchvision's ImageFolder refuses it too)",
                       root);
    names_free(&todo);
    names_free(&all);
    return rc;
}

int peft_image_folder_list(const char *dir, peft_image_folder *f, peft_err *err) {
    memset(f, 0, sizeof *f);
    name_list classes = {0};
    int rc = list_dir(dir, &classes, NULL, err), cap = 0;
    if (rc == PEFT_OK && classes.n == 0)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: no class sub-folder (ImageFolder layout: DIR/<class>/<images>)", dir);
    f->classes = classes.v;
    f->n_classes = classes.n;
    for (int i = 0; rc == PEFT_OK && i < classes.n; i++) {
        char *root = path_join(dir, classes.v[i]);
        rc = root ? walk_class(root, i, f, &cap, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
        free(root);
    }
    if (rc) peft_image_folder_free(f);
    return rc;
}

void peft_image_folder_free(peft_image_folder *f) {
    if (!f) return;
    for (int i = 0; i < f->n_classes; i++) free(f->classes[i]);
    free(f->classes);
    for (int i = 0; i < f->n_items; i++) free(f->items[i].path);
    free(f->items);
    memset(f, 0, sizeof *f);
}
