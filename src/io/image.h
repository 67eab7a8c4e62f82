/* image.h: PNG and JPEG decoding (libpng, libjpeg-turbo) into 8-bit RGB, as Pillow sees them,
 * and ImageFolder directory listing (torchvision's layout: DIR/<class>/<files>).
 *
 * The decoded pixels are those of PIL's Image.open(path).convert("RGB"), byte for byte:
 *  - 16-bit RGB / RGBA / gray+alpha PNGs keep the high byte of each sample (PIL's "RGB;16B");
 *    16-bit gray without alpha is PIL's "I;16", whose RGB conversion clamps values above 255
 *    to 255 (not a rescale);
 *  - 1/2/4-bit gray is expanded by bit replication (0..3 -> 0, 85, 170, 255), palettes looked up;
 *  - alpha (an alpha channel or a tRNS chunk) is dropped from rgb and kept apart in `alpha`,
 *    because transformers' convert_to_rgb composites it onto white (image_preprocess.h);
 *  - JPEG: libjpeg's default decoder (islow IDCT, fancy upsampling) to RGB; CMYK / YCCK
 *    files are converted with PIL's CMYK->RGB formula (Adobe files are stored inverted);
 *  - EXIF orientation is NOT applied (neither PIL's open nor transformers apply it);
 *  - gamma, ICC profiles and sRGB chunks are ignored, as PIL does.
 * The format is recognised from the first bytes, not the file name. */
#ifndef PEFT_IO_IMAGE_H
#define PEFT_IO_IMAGE_H

#include <stdint.h>

#include "error.h"

/* PIL refuses images of more than 2 * Image.MAX_IMAGE_PIXELS pixels as a decompression bomb;
 * peft.c refuses them too, from the header, before allocating. */
#define PEFT_IMAGE_MAX_PIXELS (2LL * 89478485LL)

typedef struct peft_image {
    int width, height;
    const char *mode; /* the file's mode as PIL names it: "1", "L", "I;16", "LA", "P", "RGB",
                       * "RGBA", "CMYK" (what transformers sees before convert_to_rgb) */
    uint8_t *rgb;   /* [height, width, 3], row-major */
    uint8_t *alpha; /* [height, width], or NULL when the file has no alpha and no tRNS */
} peft_image;

/* Decodes a PNG or JPEG file. On success fills *img (free with peft_image_free); on failure
 * (unreadable, not PNG/JPEG, corrupt or truncated, too large) returns a PEFT_E* code with a
 * message naming the file, and *img is left empty. Thread-safe: no global state. */
int peft_image_load(const char *path, peft_image *img, peft_err *err);
/* The same for a file already in memory; `what` names it in messages. */
int peft_image_decode(const unsigned char *data, size_t len, const char *what, peft_image *img, peft_err *err);
void peft_image_free(peft_image *img);

/* One sample of an ImageFolder. */
typedef struct peft_image_item {
    char *path;
    int label;
} peft_image_item;

typedef struct peft_image_folder {
    int n_classes;
    char **classes;        /* [n_classes] sub-folder names, sorted (label = index) */
    int n_items;
    peft_image_item *items; /* [n_items] in torchvision's order: by class, then by path */
    int n_skipped;          /* files without an image extension, skipped as torchvision does */
} peft_image_folder;

/* Lists DIR as torchvision.datasets.ImageFolder does: classes are the sorted names of DIR's
 * sub-directories; each class's files are found recursively (directories in sorted path order,
 * files sorted by name); a file counts when its name ends (case-insensitively) in one of
 * torchvision's image extensions. Those that peft.c cannot decode (.bmp, .webp, ...) are an
 * error naming the file; a class without any image is an error, as in torchvision. Files are
 * not opened here: peft_image_load reports unreadable or corrupt ones. */
int peft_image_folder_list(const char *dir, peft_image_folder *f, peft_err *err);
void peft_image_folder_free(peft_image_folder *f);

#endif
