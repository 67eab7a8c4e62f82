/* safetensors.h: reading (mmap, validated header) and writing (atomic) the safetensors
 * format, and opening the weights of a Hugging Face model directory, single-file or sharded.
 *
 * Format: u64 little-endian header length N, then N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
 * then the data section; offsets are relative to the data section. */
#ifndef PEFT_IO_SAFETENSORS_H
#define PEFT_IO_SAFETENSORS_H

#include <stdint.h>
#include "dtype.h"
#include "error.h"
#include "fileio.h"

#define PEFT_ST_MAX_DIMS 8
#define PEFT_ST_MAX_HEADER (100u << 20) /* 100 MB: far above any real header, stops absurd allocations */
#define PEFT_ST_MAX_TENSORS 1000000

typedef struct peft_st_tensor {
    char *name;
    peft_dtype dtype;
    int ndim;
    int64_t shape[PEFT_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data; /* points into the mapping; may be unaligned */
    /* 0, or the ggml block type (PEFT_GGML_Q8_0, ... io/gguf.h) of a GGUF tensor kept as read:
     * data then holds shape[0] rows of blocks, nbytes in all, and dtype does not apply. */
    int ggml_type;
} peft_st_tensor;

typedef struct peft_st_file {
    char *path;
    peft_mapping map;
    int n_tensors;
    peft_st_tensor *tensors; /* sorted by name */
    char *metadata_json;     /* the "__metadata__" object as JSON text, or NULL */
} peft_st_file;

/* Maps and validates: header inside the file, known dtypes, shape x dtype == byte length,
 * offsets inside the data section, no overlapping or duplicate tensors. */
int peft_st_open(const char *path, peft_st_file **out, peft_err *err);
/* Same checks on a buffer the caller keeps alive (used by the fuzzer); no mapping owned. */
int peft_st_parse(const unsigned char *data, size_t size, const char *what, peft_st_file **out, peft_err *err);
void peft_st_close(peft_st_file *f);
const peft_st_tensor *peft_st_find(const peft_st_file *f, const char *name);

/* One tensor to write. data holds numel elements of dtype, contiguous. */
typedef struct peft_st_entry {
    const char *name;
    peft_dtype dtype;
    int ndim;
    int64_t shape[PEFT_ST_MAX_DIMS];
    const void *data;
} peft_st_entry;

/* Writes entries (any order; stored sorted by name) with optional string metadata
 * (meta_kv: alternating keys and values, n_meta pairs) to path atomically. */
int peft_st_write(const char *path, const peft_st_entry *entries, int n, const char *const *meta_kv, int n_meta,
                  peft_err *err);

/* The weights of a model directory: model.safetensors, or the shards listed by
 * model.safetensors.index.json. */
typedef struct peft_weights {
    int n_files;
    peft_st_file **files;
} peft_weights;

int peft_weights_open(const char *model_dir, peft_weights **out, peft_err *err);
void peft_weights_close(peft_weights *w);
/* NULL if no file holds the name. */
const peft_st_tensor *peft_weights_find(const peft_weights *w, const char *name, const char **file_path);

/* Copies tensor `name` as f32 into dst after checking its shape equals shape[ndim].
 * Errors name the tensor and file: missing tensor, wrong shape, non-float dtype. */
int peft_weights_read_f32(const peft_weights *w, const char *name, int ndim, const int64_t *shape, float *dst,
                          peft_err *err);

#endif
