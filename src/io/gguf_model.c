/* gguf_model.c: a llama-family GGUF as a Hugging Face checkpoint: config.json rebuilt from the
 * llama.* metadata (and validated by hf_config.c, as any config.json), tensors renamed from
 * llama.cpp's names to HF's, dequantized to f32 (or, on request, the linear sites' block-typed
 * weights kept as read), and llama.cpp's q/k row permutation undone. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "gguf.h"
#include "kernels/quant.h"

/* A uint key of the architecture ("llama.block_count") as an int >= 1 into the config. */
static int add_int(cJSON *cfg, const peft_gguf_file *f, const char *arch, const char *key, const char *hf, int required,
                   peft_err *err) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v = -1;
    int rc = peft_gguf_get_int(f, full, required, 1, INT32_MAX, &v, err);
    if (rc == PEFT_OK && v >= 0) cJSON_AddNumberToObject(cfg, hf, (double)v);
    return rc;
}

/* The config.json an HF checkpoint of this GGUF would have. */
static int build_config(const peft_gguf_file *f, int *permuted, char **json, peft_err *err) {
    const char *arch;
    size_t arch_len;
    int rc = peft_gguf_get_str(f, "general.architecture", 1, &arch, &arch_len, err);
    if (rc) return rc;
    const peft_gguf_arch *known = peft_gguf_arch_find(arch, arch_len);
    if (!known)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: general.architecture \"%.*s\" is not supported (supported: llama, mistral, qwen2)",
                         f->path, (int)(arch_len > 64 ? 64 : arch_len), arch);
    const char *a = known->gguf;
    *permuted = known->permuted;
    cJSON *cfg = cJSON_CreateObject(), *archs = cJSON_AddArrayToObject(cfg, "architectures");
    if (!cfg || !archs) {
        cJSON_Delete(cfg);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    }
    cJSON_AddItemToArray(archs, cJSON_CreateString(known->hf));
    if ((rc = add_int(cfg, f, a, "embedding_length", "hidden_size", 1, err)) ||
        (rc = add_int(cfg, f, a, "block_count", "num_hidden_layers", 1, err)) ||
        (rc = add_int(cfg, f, a, "feed_forward_length", "intermediate_size", 1, err)) ||
        (rc = add_int(cfg, f, a, "attention.head_count", "num_attention_heads", 1, err)) ||
        (rc = add_int(cfg, f, a, "attention.head_count_kv", "num_key_value_heads", 0, err)) ||
        (rc = add_int(cfg, f, a, "attention.key_length", "head_dim", 0, err)) ||
        (rc = add_int(cfg, f, a, "context_length", "max_position_embeddings", 0, err)))
        goto done;
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    if ((rc = peft_gguf_get_float(f, key, 1, &v, err))) goto done;
    cJSON_AddNumberToObject(cfg, "rms_norm_eps", v);
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    v = 10000.0;
    if ((rc = peft_gguf_get_float(f, key, 0, &v, err))) goto done;
    cJSON_AddNumberToObject(cfg, "rope_theta", v);
    /* what peft.c's RoPE cannot do is refused: partial rotary, scaled or per-frequency RoPE */
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(cfg, "head_dim");
    int64_t heads = (int64_t)cJSON_GetObjectItemCaseSensitive(cfg, "num_attention_heads")->valuedouble;
    int64_t head_dim = hd ? (int64_t)hd->valuedouble : (int64_t)cJSON_GetObjectItemCaseSensitive(cfg, "hidden_size")->valuedouble / heads;
    int64_t rope_dim = head_dim, vlen = head_dim;
    snprintf(key, sizeof key, "%s.rope.dimension_count", a);
    if ((rc = peft_gguf_get_int(f, key, 0, 1, INT32_MAX, &rope_dim, err))) goto done;
    snprintf(key, sizeof key, "%s.attention.value_length", a);
    if ((rc = peft_gguf_get_int(f, key, 0, 1, INT32_MAX, &vlen, err))) goto done;
    if (rope_dim != head_dim || vlen != head_dim) {
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: %s.rope.dimension_count %lld / value_length %lld differ from the head dimension %lld (partial RoPE is not supported)",
                       f->path, a, (long long)rope_dim, (long long)vlen, (long long)head_dim);
        goto done;
    }
    const char *st = "none";
    size_t st_len = 4;
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if ((rc = peft_gguf_get_str(f, key, 0, &st, &st_len, err))) goto done;
    if (st_len != 4 || memcmp(st, "none", 4)) {
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: %s = \"%.*s\": RoPE scaling is not supported", f->path, key, (int)(st_len > 32 ? 32 : st_len), st);
        goto done;
    }
    if (peft_gguf_find_tensor(f, "rope_freqs.weight")) {
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"rope_freqs.weight\" (per-frequency RoPE factors, llama3 scaling) is not supported", f->path);
        goto done;
    }
    /* the vocabulary is the token list; tied when there is no output.weight */
    const peft_gguf_kv *toks = peft_gguf_find(f, "tokenizer.ggml.tokens");
    if (toks && toks->type == PEFT_GGUF_ARRAY) {
        cJSON_AddNumberToObject(cfg, "vocab_size", (double)toks->n);
    } else if ((rc = add_int(cfg, f, a, "vocab_size", "vocab_size", 1, err))) {
        rc = peft_err_prefix(err, "no tokenizer.ggml.tokens: ");
        goto done;
    }
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", !peft_gguf_find_tensor(f, "output.weight"));
    cJSON_AddBoolToObject(cfg, "attention_bias", peft_gguf_find_tensor(f, "blk.0.attn_output.bias") != NULL);
    cJSON_AddBoolToObject(cfg, "mlp_bias", peft_gguf_find_tensor(f, "blk.0.ffn_down.bias") != NULL);
    if (!strcmp(a, "mistral")) cJSON_AddBoolToObject(cfg, "use_sliding_window", 0); /* GGUF carries no window */
    static const char *const ids[][2] = {{"tokenizer.ggml.bos_token_id", "bos_token_id"}, {"tokenizer.ggml.eos_token_id", "eos_token_id"}};
    for (int i = 0; i < 2; i++) {
        int64_t id = -1;
        if ((rc = peft_gguf_get_int(f, ids[i][0], 0, 0, UINT32_MAX, &id, err))) goto done;
        if (id >= 0 && id < INT32_MAX) cJSON_AddNumberToObject(cfg, ids[i][1], (double)id);
    }
    cJSON_AddStringToObject(cfg, "torch_dtype", "float32");
    if (!(*json = cJSON_PrintUnformatted(cfg))) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
done:
    cJSON_Delete(cfg);
    return rc;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const peft_st_tensor *)a)->name, ((const peft_st_tensor *)b)->name);
}

/* Undoes convert_hf_to_gguf.py's permute(w, n_head): w.reshape(n_head, 2, rows/n_head/2, ...)
 * .swapaxes(1, 2). HF row h*HD + i*HD/2 + j was stored as row h*HD + 2j + i. dst, src [rows] rows
 * of row_bytes each, distinct: f32 values, or whole rows of blocks (blocks run along a row, so a
 * block-form tensor un-permutes by moving its rows as they are). */
static void unpermute_rows(unsigned char *dst, const unsigned char *src, size_t rows, size_t row_bytes, int n_head) {
    size_t hd = rows / (size_t)n_head, half = hd / 2;
    for (size_t h = 0; h < (size_t)n_head; h++)
        for (size_t i = 0; i < 2; i++)
            for (size_t j = 0; j < half; j++)
                memcpy(dst + (h * hd + i * half + j) * row_bytes, src + (h * hd + 2 * j + i) * row_bytes, row_bytes);
}

/* A linear site's weight under its HF name: model.layers.N.{self_attn,mlp}.*_proj.weight. */
static int is_site_weight(const char *hf) {
    size_t n = strlen(hf);
    return !strncmp(hf, "model.layers.", 13) && n > 12 && !strcmp(hf + n - 12, "_proj.weight");
}

/* The tensors as one peft_st_file of HF-named tensors: f32 in an anonymous mapping (which
 * peft_st_close unmaps as it would a file's), and with keep_blocks the block-typed site weights
 * as read (ggml_type set): pointing into the GGUF mapping, whose ownership moves to a second,
 * tensorless peft_st_file, or, for permuted q/k rows, moved row by row into the anonymous
 * mapping after the f32 tensors. */
static int build_weights(peft_gguf_file *f, const peft_llama_config *cfg, int permuted, int keep_blocks, peft_weights **out,
                         peft_err *err) {
    peft_weights *w = calloc(1, sizeof *w);
    peft_st_file *sf = calloc(1, sizeof *sf), *owner = keep_blocks ? calloc(1, sizeof *owner) : NULL;
    if (w) w->files = calloc(2, sizeof *w->files);
    if (!w || !sf || (keep_blocks && !owner) || !w->files || !(sf->path = strdup(f->path)) ||
        !(sf->tensors = calloc((size_t)f->n_tensors + 1, sizeof *sf->tensors))) {
        free(w ? w->files : NULL);
        free(w);
        if (sf) free(sf->path);
        free(sf);
        free(owner);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    }
    w->files[0] = sf;
    w->n_files = 1;
    if (owner) w->files[w->n_files++] = owner; /* closed with w from here on */
    size_t total = 0, moved = 0, largest = 0; /* bytes: f32 tensors, block rows moved, largest permuted f32 */
    int rc = PEFT_OK, in_file = 0;
    if (owner && (!(owner->path = strdup(f->path)) || !(owner->tensors = calloc(1, sizeof *owner->tensors))))
        rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    for (int i = 0; rc == PEFT_OK && i < f->n_tensors; i++) {
        const peft_gguf_tensor *g = &f->tensors[i];
        peft_st_tensor *t = &sf->tensors[sf->n_tensors];
        char hf[160];
        int qk;
        if (!peft_gguf_hf_name(g->name, hf, sizeof hf, &qk)) {
            rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"%s\" is not one of a %s model's", f->path, g->name, cfg->arch_name);
            break;
        }
        if (g->ndim > 2) {
            rc = peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\" has %d dimensions (weights have 1 or 2)", f->path, g->name, g->ndim);
            break;
        }
        if (!(t->name = strdup(hf))) {
            rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
            break;
        }
        sf->n_tensors++;
        t->dtype = PEFT_F32;
        t->ndim = g->ndim;
        for (int d = 0; d < g->ndim; d++) t->shape[d] = g->ne[g->ndim - 1 - d]; /* PyTorch order: ne reversed */
        t->numel = g->numel;
        if (keep_blocks && g->ndim == 2 && is_site_weight(hf) && peft_qformat_of_ggml(g->type)) {
            t->ggml_type = g->type; /* rows of whole blocks: gguf.c checked ne[0] % block and the size */
            t->nbytes = g->nbytes;
            if (qk && permuted) {
                t->data = (const void *)(uintptr_t)moved; /* offset into the moved rows for now */
                if (!peft_add_ok(moved, t->nbytes, &moved)) rc = peft_fail(err, PEFT_EFORMAT, "%s: tensors too large", f->path);
            } else {
                t->data = g->data;
                in_file = 1;
            }
            continue;
        }
        t->nbytes = g->numel * sizeof(float); /* numel * type_size fitted, so this does too */
        t->data = (const void *)(uintptr_t)total; /* offset into the slab for now */
        if (!peft_add_ok(total, t->nbytes, &total)) rc = peft_fail(err, PEFT_EFORMAT, "%s: tensors too large", f->path);
        if (qk && permuted && t->nbytes > largest) largest = t->nbytes;
    }
    unsigned char *slab = MAP_FAILED;
    float *tmp = NULL;
    size_t size = 0;
    if (rc == PEFT_OK && !peft_add_ok(total, moved, &size)) rc = peft_fail(err, PEFT_EFORMAT, "%s: tensors too large", f->path);
    if (rc == PEFT_OK && size) {
        slab = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        tmp = largest ? malloc(largest) : NULL;
        if (slab == MAP_FAILED || (largest && !tmp))
            rc = peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu MB for the dequantized weights", f->path, size >> 20);
        else
            sf->map = (peft_mapping){slab, size, 1};
    }
    for (int i = 0; rc == PEFT_OK && i < f->n_tensors; i++) {
        const peft_gguf_tensor *g = &f->tensors[i];
        peft_st_tensor *t = &sf->tensors[i];
        char hf[160];
        int qk;
        peft_gguf_hf_name(g->name, hf, sizeof hf, &qk);
        int n_head = qk == 1 ? cfg->n_heads : cfg->n_kv_heads;
        size_t rows = (size_t)t->shape[0];
        int unpermute = qk && permuted && rows;
        if (unpermute && rows % (2 * (size_t)n_head)) {
            rc = peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" has %zu rows, not a multiple of 2 x %d heads", f->path, g->name, rows, n_head);
            break;
        }
        if (t->ggml_type) { /* in block form: only permuted rows move */
            if (unpermute) {
                unsigned char *dst = slab + total + (uintptr_t)t->data;
                unpermute_rows(dst, g->data, rows, t->nbytes / rows, n_head);
                t->data = dst;
            }
            continue;
        }
        float *dst = (float *)(slab + (uintptr_t)t->data);
        t->data = dst;
        if (unpermute) {
            peft_gguf_dequantize(g, tmp);
            unpermute_rows((unsigned char *)dst, (const unsigned char *)tmp, rows, t->nbytes / rows, n_head);
        } else {
            peft_gguf_dequantize(g, dst);
        }
    }
    free(tmp);
    if (rc == PEFT_OK) {
        qsort(sf->tensors, (size_t)sf->n_tensors, sizeof *sf->tensors, cmp_name);
        for (int i = 1; i < sf->n_tensors && rc == PEFT_OK; i++)
            if (!strcmp(sf->tensors[i - 1].name, sf->tensors[i].name))
                rc = peft_fail(err, PEFT_EFORMAT, "%s: two tensors map to \"%s\"", f->path, sf->tensors[i].name);
    }
    if (rc) {
        peft_weights_close(w);
        return rc;
    }
    if (in_file) { /* tensors point into the GGUF: its mapping lives as long as the weights */
        owner->map = f->map;
        f->map = (peft_mapping){0};
    }
    *out = w;
    return PEFT_OK;
}

int peft_gguf_open_llama(const char *path, peft_llama_config *cfg, peft_weights **weights, peft_err *err) {
    return peft_gguf_open_llama_ex(path, 0, cfg, weights, err);
}

int peft_gguf_open_llama_ex(const char *path, int keep_blocks, peft_llama_config *cfg, peft_weights **weights,
                            peft_err *err) {
    *weights = NULL;
    peft_gguf_file *f;
    int rc = peft_gguf_open(path, &f, err), permuted = 0;
    char *json = NULL, what[4200];
    if (rc == PEFT_OK) rc = build_config(f, &permuted, &json, err);
    snprintf(what, sizeof what, "%s (its llama.* metadata as config.json)", path);
    if (rc == PEFT_OK) rc = peft_llama_config_parse(json, strlen(json), what, cfg, err);
    if (rc == PEFT_OK) rc = build_weights(f, cfg, permuted, keep_blocks, weights, err);
    free(json);
    peft_gguf_close(f);
    return rc;
}
