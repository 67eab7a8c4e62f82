/* cmd_export.c: `peft export --gguf`: a LoRA adapter as llama.cpp's GGUF LoRA (the file
 * convert_lora_to_gguf.py writes, loaded by `llama-cli --lora` / llama_adapter_lora_init), or,
 * with --merged, the merged model as one GGUF (what llama-export-lora writes). docs/gguf.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "io/gguf.h"
#include "io/gguf_write.h"
#include "methods/adapter_set.h"
#include "methods/lora.h"

static void usage(void) {
    printf("usage: peft export --model BASE --adapter DIR --gguf OUT.gguf [--type f32|f16|bf16|q8_0]\n"
           "       peft export --model BASE.gguf [--adapter DIR] --merged --gguf OUT.gguf [--type ...]\n"
           "  Without --merged: the LoRA adapter DIR as a llama.cpp GGUF LoRA (general.type adapter,\n"
           "  tensors <base tensor>.lora_a / .lora_b, adapter.lora.alpha), as convert_lora_to_gguf.py\n"
           "  writes it; load it with llama.cpp's --lora next to the base model's GGUF. rsLoRA and\n"
           "  per-module ranks/alphas are folded into lora_b so that llama.cpp's alpha/r is exact.\n"
           "  --merged: the model with the adapter merged (or the base alone), one GGUF: BASE.gguf's\n"
           "  metadata and unchanged tensors as they are, changed tensors in --type.\n"
           "  --type T   tensor type of what is written (default f32); q8_0 rows that are not a\n"
           "             multiple of 32 values fall back to f16, as convert_hf_to_gguf.py does\n");
}

/* The ggml type of --type. */
static int parse_type(const char *s, int *type) {
    static const struct {
        const char *name;
        int type;
    } types[] = {{"f32", PEFT_GGML_F32}, {"f16", PEFT_GGML_F16}, {"bf16", PEFT_GGML_BF16}, {"q8_0", PEFT_GGML_Q8_0}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(s, types[i].name)) return *type = types[i].type, 1;
    return 0;
}

/* Buffers the writer points into, freed after the write. */
typedef struct owned {
    void **p;
    int n, cap;
} owned;

static void *owned_alloc(owned *o, size_t bytes) {
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        void **q = realloc(o->p, (size_t)cap * sizeof *q);
        if (!q) return NULL;
        o->p = q, o->cap = cap;
    }
    void *b = malloc(bytes ? bytes : 1);
    if (b) o->p[o->n++] = b;
    return b;
}

static void owned_free(owned *o) {
    for (int i = 0; i < o->n; i++) free(o->p[i]);
    free(o->p);
}

/* The type a tensor whose rows hold ne0 values is written in: 1-D tensors stay f32, and q8_0
 * falls back to f16 for rows it cannot block (convert_hf_to_gguf.py's prepare_tensors). */
static int tensor_type(int want, int ndim, int64_t ne0) {
    if (ndim < 2) return PEFT_GGML_F32;
    if (want == PEFT_GGML_Q8_0 && ne0 % 32) return PEFT_GGML_F16;
    return want;
}

/* Adds src [rows, cols] (row-major, an HF [out, in] layout) as tensor `name` with ggml ne
 * {cols, rows} (1-D when rows is 0) in type `want`. */
static int add_values(peft_gguf_writer *w, owned *o, const char *name, const float *src, int64_t rows, int64_t cols, int want,
                      peft_err *err) {
    int ndim = rows ? 2 : 1, type = tensor_type(want, ndim, cols);
    size_t n = (size_t)cols * (size_t)(rows ? rows : 1), bytes = peft_gguf_type_bytes(type, n);
    void *dst = owned_alloc(o, bytes);
    if (!dst) return peft_fail(err, PEFT_ENOMEM, "out of memory for tensor %s", name);
    if (peft_gguf_encode(type, src, n, dst))
        return peft_fail(err, PEFT_EUNSUPPORTED, "tensor %s: type %s cannot be written by this build", name, peft_ggml_type_name(type));
    const int64_t ne[2] = {cols, rows};
    peft_gguf_add_tensor(w, name, type, ndim, ne, dst, bytes);
    return PEFT_OK;
}

/* The heads whose rows llama.cpp permutes in an HF tensor (qk as peft_gguf_name_of_hf gives
 * it), or 0 when it keeps them in HF order. */
static int permuted_heads(const peft_model *m, const peft_gguf_arch *arch, int qk) {
    if (!arch->permuted || !qk) return 0;
    return qk == 1 ? m->info.n_heads : m->info.n_kv_heads;
}

/* rows [rows, cols] of src in llama.cpp's q/k order into dst (a copy when heads is 0). */
static int to_gguf_rows(float *dst, const float *src, int64_t rows, int64_t cols, int heads, const char *name, peft_err *err) {
    if (!heads) {
        memcpy(dst, src, (size_t)rows * (size_t)cols * sizeof(float));
        return PEFT_OK;
    }
    if (rows % (2 * heads))
        return peft_fail(err, PEFT_ESHAPE, "%s has %lld rows, not a multiple of 2 x %d heads", name, (long long)rows, heads);
    peft_gguf_permute_rows(dst, src, (size_t)rows, (size_t)cols, heads);
    return PEFT_OK;
}

/* Why a method's adapter has no exact llama.cpp LoRA form, for the refusal. */
static const char *no_lora_form(const peft_method *method) {
    if (!strcmp(method->name, "dora")) return "DoRA rescales every row of W + sBA by a learned magnitude, which llama.cpp's W x + s B A x cannot express";
    if (!strncmp(method->name, "pissa", 5) || !strncmp(method->name, "corda", 5))
        return "its adapter belongs to the residual base W - s B0 A0, not to the model's weights; train with --save-as-lora to get "
               "the equivalent plain LoRA of the original model, and export that";
    if (method->attach_model) return "it changes the model's inputs or norms, not a linear layer";
    return "llama.cpp's adapters are LoRA only (W x + s B A x)";
}

static int export_lora(cli_model *cm, const peft_gguf_arch *arch, const char *adapter_dir, int type, const char *out, peft_err *err) {
    const peft_adapter_config *cfg = peft_adapter_set_config(cm->adapters);
    const peft_method *method = peft_method_find(cfg->method);
    if (method != &peft_method_lora)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: %s adapters cannot be written as a GGUF LoRA: %s%s", adapter_dir, method->name,
                         no_lora_form(method), method->merge ? " (--merged writes the merged model instead)" : "");
    /* llama.cpp scales every pair by alpha / r, r = lora_b's ne[0]: the config's alpha (alpha sqrt(r)
     * with rsLoRA, whose alpha / sqrt(r) the converter would lose), and sites whose s differs
     * (rank and alpha patterns) get the ratio folded into lora_b */
    double alpha = cfg->opts.use_rslora ? cfg->opts.alpha * sqrt((double)cfg->opts.rank) : cfg->opts.alpha;
    peft_gguf_writer w;
    peft_gguf_writer_init(&w);
    const char *base_name = strrchr(adapter_dir, '/');
    base_name = base_name && base_name[1] ? base_name + 1 : adapter_dir;
    peft_gguf_add_str(&w, "general.architecture", arch->gguf, strlen(arch->gguf));
    peft_gguf_add_str(&w, "general.type", "adapter", 7);
    peft_gguf_add_str(&w, "adapter.type", "lora", 4);
    peft_gguf_add_str(&w, "general.name", base_name, strlen(base_name));
    peft_gguf_add_f32(&w, "adapter.lora.alpha", (float)alpha);
    peft_gguf_add_u32(&w, "general.quantization_version", 2);
    owned o = {0};
    int rc = PEFT_OK;
    for (int i = 0; rc == PEFT_OK && i < cm->model->n_sites; i++) {
        peft_site *s = cm->model->sites[i];
        if (!s->adapter) continue;
        peft_param p[2];
        method->params(s->adapter, p, 2); /* lora_A [r, in], lora_B [out, r] */
        int r = (int)p[0].shape[0], qk;
        char hf[160], name[200];
        snprintf(hf, sizeof hf, "%s.weight", s->name);
        if (!peft_gguf_name_of_hf(hf, name, sizeof name - 8, &qk)) {
            rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: module %s has no llama.cpp tensor name", adapter_dir, s->name);
            break;
        }
        double scale = lora_adapter_scale(s->adapter), ratio = alpha != 0 ? scale * r / alpha : scale; /* alpha 0: llama.cpp's s is 1 */
        float *B = owned_alloc(&o, (size_t)s->out_features * r * sizeof(float));
        if (!B) {
            rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
            break;
        }
        rc = to_gguf_rows(B, p[1].data, s->out_features, r, permuted_heads(cm->model, arch, qk), s->name, err);
        if (fabs(ratio - 1) > 1e-6) /* an exact 1 leaves the bytes as trained */
            for (size_t k = 0; k < (size_t)s->out_features * r; k++) B[k] = (float)(B[k] * ratio);
        size_t len = strlen(name);
        strcpy(name + len, ".lora_a");
        if (rc == PEFT_OK) rc = add_values(&w, &o, name, p[0].data, r, s->in_features, type, err);
        strcpy(name + len, ".lora_b");
        if (rc == PEFT_OK) rc = add_values(&w, &o, name, B, s->out_features, r, type, err);
    }
    if (rc == PEFT_OK) rc = peft_gguf_write(&w, out, err);
    if (rc == PEFT_OK) printf("wrote %s: %d LoRA pairs, alpha %g, %s\n", out, w.n_t / 2, alpha, peft_ggml_type_name(type));
    peft_gguf_writer_free(&w);
    owned_free(&o);
    return rc;
}

/* The merged model as base_path's GGUF with the tensors whose values changed re-encoded: every
 * tensor of the base is dequantized and compared with the model's values in llama.cpp's layout;
 * equal ones (all of them without an adapter) are copied byte for byte in their own type. */
static int export_merged_gguf(cli_model *cm, const char *base_path, int type, const char *out, peft_err *err) {
    if (cm->adapters) {
        int rc = peft_adapter_set_merge(cm->adapters, +1, err);
        if (rc) return rc;
    }
    peft_gguf_file *f;
    int rc = peft_gguf_open(base_path, &f, err), changed = 0;
    if (rc) return rc;
    const char *a;
    size_t a_len;
    const peft_gguf_arch *arch = NULL;
    if ((rc = peft_gguf_get_str(f, "general.architecture", 1, &a, &a_len, err)) == PEFT_OK && !(arch = peft_gguf_arch_find(a, a_len)))
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: general.architecture is not one peft.c writes", base_path);
    peft_gguf_writer w;
    peft_gguf_writer_init(&w);
    for (int i = 0; rc == PEFT_OK && i < f->n_kv; i++) peft_gguf_add_kv(&w, &f->kv[i]);
    size_t largest = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].numel > largest) largest = f->tensors[i].numel;
    float *base = malloc((largest ? largest : 1) * sizeof(float)), *mine = malloc((largest ? largest : 1) * sizeof(float));
    if (rc == PEFT_OK && (!base || !mine)) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    owned o = {0};
    for (int i = 0; rc == PEFT_OK && i < f->n_tensors; i++) {
        const peft_gguf_tensor *g = &f->tensors[i];
        char hf[160];
        int qk;
        const float *v = peft_gguf_hf_name(g->name, hf, sizeof hf, &qk) ? peft_model_tensor(cm->model, hf, NULL, NULL) : NULL;
        int64_t rows = g->ndim > 1 ? g->ne[1] : 0, cols = g->ne[0];
        if (v) {
            rc = to_gguf_rows(mine, v, rows ? rows : 1, cols, permuted_heads(cm->model, arch, qk), hf, err);
            peft_gguf_dequantize(g, base);
        }
        if (rc || !v || !memcmp(mine, base, g->numel * sizeof(float))) {
            peft_gguf_add_tensor(&w, g->name, g->type, g->ndim, g->ne, g->data, g->nbytes);
            continue;
        }
        changed++;
        rc = add_values(&w, &o, g->name, mine, rows, cols, type, err);
    }
    if (rc == PEFT_OK) rc = peft_gguf_write(&w, out, err);
    if (rc == PEFT_OK) printf("wrote %s: %d tensors, %d of them changed (written as %s)\n", out, w.n_t, changed, peft_ggml_type_name(type));
    peft_gguf_writer_free(&w);
    owned_free(&o);
    free(base), free(mine);
    peft_gguf_close(f);
    return rc;
}

int cmd_export(int argc, char **argv) {
    cli_args a;
    args_init(&a, "export", argc, argv);
    if (a.help) {
        usage();
        return 0;
    }
    const char *model = args_str(&a, "--model", NULL), *adapter = args_str(&a, "--adapter", NULL);
    const char *out = args_str(&a, "--gguf", NULL), *type_name = args_str(&a, "--type", "f32");
    int merged = args_has(&a, "--merged"), rc = args_finish(&a), type;
    if (rc) return rc;
    if (!model || !out || (!adapter && !merged)) {
        fprintf(stderr, "peft export: --model and --gguf are required, and --adapter unless --merged\n");
        return 2;
    }
    if (!parse_type(type_name, &type)) {
        fprintf(stderr, "peft export: --type %s: expected f32, f16, bf16 or q8_0\n", type_name);
        return 2;
    }
    if (peft_same_path(model, out)) {
        fprintf(stderr, "peft export: --gguf must differ from --model (the base is kept intact)\n");
        return 2;
    }
    int base_gguf = peft_gguf_is_file(model);
    if (merged && !base_gguf) {
        fprintf(stderr, "peft export: --merged --gguf needs a GGUF base (--model FILE.gguf); for an HF checkpoint use "
                        "`peft merge` and llama.cpp's convert_hf_to_gguf.py\n");
        return 2;
    }
    peft_err err = {0};
    cli_model cm = {0}; /* no tokenizer: the GGUF base carries its own, a LoRA file needs none */
    rc = peft_model_load(model, NULL, &cm.model, &err);
    if (rc == PEFT_OK && adapter) rc = peft_adapter_set_load(adapter, cm.model, 0, &cm.adapters, &err);
    if (rc) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    const peft_gguf_arch *arch = peft_gguf_arch_of_hf(cm.model->info.hf_class);
    if (!arch) rc = peft_fail(&err, PEFT_EUNSUPPORTED, "%s: %s has no GGUF architecture peft.c writes", model, cm.model->info.hf_class);
    else if (merged) rc = export_merged_gguf(&cm, model, type, out, &err);
    else rc = export_lora(&cm, arch, adapter, type, out, &err);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
