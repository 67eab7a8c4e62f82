/* gguf.h: reading GGUF v3 files (llama.cpp's format) and opening a llama-family GGUF as a
 * peft.c model: its config from the metadata, its weights dequantized to f32 under their
 * Hugging Face names, its tokenizer from the embedded vocabulary (docs/gguf.md).
 *
 * Format (all little-endian):
 *   u32 magic "GGUF", u32 version (3; 2 reads the same), u64 n_tensors, u64 n_kv
 *   n_kv x { string key, u32 value type, value }          string = u64 length + bytes
 *                                                          array  = u32 elem type, u64 count, elems
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset }
 *   padding to general.alignment (default 32), then the data section; tensor offsets are
 *   relative to it and multiples of the alignment. ne[0] is the fastest-varying dimension
 *   (a [out, in] PyTorch weight has ne = {in, out}). */
#ifndef PEFT_IO_GGUF_H
#define PEFT_IO_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "fileio.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

#define PEFT_GGUF_MAX_DIMS 4
#define PEFT_GGUF_MAX_TENSORS 1000000
#define PEFT_GGUF_MAX_KV 1000000
#define PEFT_GGUF_MAX_STRING (1u << 30) /* one key, name or string value; stops absurd lengths */

/* Metadata value types. */
enum {
    PEFT_GGUF_U8 = 0, PEFT_GGUF_I8, PEFT_GGUF_U16, PEFT_GGUF_I16, PEFT_GGUF_U32, PEFT_GGUF_I32, PEFT_GGUF_F32,
    PEFT_GGUF_BOOL, PEFT_GGUF_STRING, PEFT_GGUF_ARRAY, PEFT_GGUF_U64, PEFT_GGUF_I64, PEFT_GGUF_F64, PEFT_GGUF_NTYPES
};

/* The ggml tensor types peft.c reads (their numbers are ggml's). */
enum {
    PEFT_GGML_F32 = 0, PEFT_GGML_F16 = 1, PEFT_GGML_Q4_0 = 2, PEFT_GGML_Q4_1 = 3, PEFT_GGML_Q8_0 = 8,
    PEFT_GGML_Q4_K = 12, PEFT_GGML_Q5_K = 13, PEFT_GGML_Q6_K = 14, PEFT_GGML_BF16 = 30
};

/* One metadata entry. Scalars: `data` holds the value's bytes. Arrays: `arr_type` and `n`
 * elements at `data`; string arrays also have `str_off[n]`, each element's offset from data
 * (at its u64 length). Arrays of arrays are skipped safely: kept with arr_type ARRAY and no
 * accessor reads them. */
typedef struct peft_gguf_kv {
    char *key;
    int type, arr_type;
    uint64_t n;
    const unsigned char *data;
    size_t nbytes;
    size_t *str_off;
} peft_gguf_kv;

typedef struct peft_gguf_tensor {
    char *name;
    int type;                          /* PEFT_GGML_* */
    int ndim;
    int64_t ne[PEFT_GGUF_MAX_DIMS];    /* ggml order: ne[0] fastest; unused dims are 1 */
    size_t numel, nbytes;
    const unsigned char *data;         /* inside the data section, aligned to the file's alignment */
} peft_gguf_tensor;

typedef struct peft_gguf_file {
    char *path;
    peft_mapping map;
    uint32_t version;
    size_t alignment;
    int n_kv, n_tensors;
    peft_gguf_kv *kv;                  /* in file order */
    peft_gguf_tensor *tensors;         /* in file order */
} peft_gguf_file;

/* Maps and validates path: header, every key and value (strings and arrays inside the file,
 * counts bounded by the bytes left), known tensor types with ne[0] a multiple of the block,
 * sizes computed without overflow, tensor data aligned, inside the file and not overlapping,
 * no duplicate keys or tensor names. Errors name the file, the key or tensor, and the problem. */
int peft_gguf_open(const char *path, peft_gguf_file **out, peft_err *err);
/* The same on a buffer the caller keeps alive (the fuzzer); `what` names it in messages. */
int peft_gguf_parse(const unsigned char *data, size_t size, const char *what, peft_gguf_file **out, peft_err *err);
void peft_gguf_close(peft_gguf_file *f);
/* 1 when path is a regular file that starts with the GGUF magic. */
int peft_gguf_is_file(const char *path);

const peft_gguf_kv *peft_gguf_find(const peft_gguf_file *f, const char *key);
const peft_gguf_tensor *peft_gguf_find_tensor(const peft_gguf_file *f, const char *name);
/* Typed reads of a key. Absent: PEFT_OK and *out untouched when !required, else an error.
 * Present with another type (any integer type is accepted for ints and for floats, f32/f64
 * for floats; bounds [lo, hi] checked): an error naming the key. */
int peft_gguf_get_int(const peft_gguf_file *f, const char *key, int required, int64_t lo, int64_t hi, int64_t *out,
                      peft_err *err);
int peft_gguf_get_float(const peft_gguf_file *f, const char *key, int required, double *out, peft_err *err);
int peft_gguf_get_bool(const peft_gguf_file *f, const char *key, int required, int *out, peft_err *err);
/* A string value: pointer into the mapping (not NUL-terminated) and its length. */
int peft_gguf_get_str(const peft_gguf_file *f, const char *key, int required, const char **s, size_t *len,
                      peft_err *err);
/* Element i (< kv->n) of a string array. */
const char *peft_gguf_arr_str(const peft_gguf_kv *kv, uint64_t i, size_t *len);
/* Element i of a numeric array as double (integers exactly up to 2^53). */
double peft_gguf_arr_num(const peft_gguf_kv *kv, uint64_t i);
/* An array key of n elements of one of the accepted element types, else an error. */
int peft_gguf_get_array(const peft_gguf_file *f, const char *key, int required, int elem_type, uint64_t n,
                        const peft_gguf_kv **out, peft_err *err);

/* "Q4_K", ... or NULL for a type peft.c does not read. */
const char *peft_ggml_type_name(int type);
/* dst[t->numel] = the tensor dequantized as gguf.quants.dequantize does (bit for bit). */
void peft_gguf_dequantize(const peft_gguf_tensor *t, float *dst);

/* A llama-family architecture: its general.architecture name, HF's architectures[0], and
 * whether convert_hf_to_gguf.py permutes its q/k rows (LlamaModel does, Qwen2Model does not). */
typedef struct peft_gguf_arch {
    const char *gguf, *hf;
    int permuted;
} peft_gguf_arch;
/* By general.architecture (len bytes, not NUL-terminated) or by HF architecture; NULL if unknown. */
const peft_gguf_arch *peft_gguf_arch_find(const char *name, size_t len);
const peft_gguf_arch *peft_gguf_arch_of_hf(const char *hf_arch);
/* Tensor names between llama.cpp ("blk.0.attn_q.weight") and HF ("model.layers.0.self_attn.
 * q_proj.weight"), into out[size]; 0 when the name is not one of the family's. *qk: 1 for q_proj,
 * 2 for k_proj (the rows llama.cpp permutes), else 0. */
int peft_gguf_hf_name(const char *gguf_name, char *hf, size_t size, int *qk);
int peft_gguf_name_of_hf(const char *hf_name, char *gguf, size_t size, int *qk);
/* convert_hf_to_gguf.py's permute(w, n_head) of q/k rows (HF order to llama.cpp's): HF row
 * h*HD + i*HD/2 + j goes to row h*HD + 2j + i. dst, src [rows, cols], rows a multiple of
 * 2 * n_head (checked by the caller), distinct buffers. */
void peft_gguf_permute_rows(float *dst, const float *src, size_t rows, size_t cols, int n_head);

/* A llama-family GGUF (general.architecture llama, mistral or qwen2) as the model loader
 * wants it: *cfg from the llama.* metadata, *weights one peft_st_file of f32 tensors under
 * HF names and HF shapes (q/k rows un-permuted for llama/mistral), held in anonymous memory.
 * The GGUF file itself is closed before returning. */
int peft_gguf_open_llama(const char *path, peft_llama_config *cfg, peft_weights **weights, peft_err *err);

/* The tokenizer embedded in a GGUF: tokenizer.ggml.model "llama" (SentencePiece, merges by
 * score) or "gpt2" (byte-level BPE with tokenizer.ggml.merges and tokenizer.ggml.pre), given
 * to peft_tokenizer_load_json as the tokenizer.json HF's converters would write
 * (src/tokenizer/gguf_vocab.c). */
struct peft_tokenizer;
int peft_gguf_tokenizer_load(const char *path, struct peft_tokenizer **out, peft_err *err);
/* The same from an opened file (the fuzzer). */
int peft_gguf_tokenizer_from(const peft_gguf_file *f, struct peft_tokenizer **out, peft_err *err);

/* peft_gguf_open_llama with keep_blocks: the linear-site weights (model.layers.N.*_proj.weight)
 * stored in a block format (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) stay in it, as peft_st_tensors
 * with ggml_type set: rows of blocks in the mapped GGUF, which *weights then keeps mapped (q/k
 * rows of llama/mistral are un-permuted as whole block rows into anonymous memory). Every other
 * tensor is dequantized to f32 as peft_gguf_open_llama does. keep_blocks 0: that function. */
int peft_gguf_open_llama_ex(const char *path, int keep_blocks, peft_llama_config *cfg, peft_weights **weights,
                            peft_err *err);

#endif
