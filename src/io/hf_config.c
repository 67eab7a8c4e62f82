/* hf_config.c: Llama-family config.json parsing and validation. */
#include "hf_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "json.h"

static const struct {
    const char *name;
    peft_llama_arch arch;
} known_archs[] = {
    {"LlamaForCausalLM", PEFT_ARCH_LLAMA},
    {"MistralForCausalLM", PEFT_ARCH_MISTRAL},
    {"Qwen2ForCausalLM", PEFT_ARCH_QWEN2},
};

/* An int field that must lie in [lo, hi]. */
static int get_int(const cJSON *root, const char *key, int required, int lo, int hi, int *out, const char *what,
                   peft_err *err) {
    long long v = *out;
    int rc = peft_json_int(root, key, required, &v, what, err);
    if (rc) return rc;
    if (v < lo || v > hi) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" = %lld is outside [%d, %d]", what, key, v, lo, hi);
    *out = (int)v;
    return PEFT_OK;
}

/* RoPE. transformers 5 writes "rope_parameters" {"rope_type", "rope_theta", the type's fields};
 * older configs "rope_scaling" (or null) next to a top-level "rope_theta". As transformers'
 * convert_rope_params_to_dict: a non-null rope_scaling wins over rope_parameters, a rope_theta
 * inside the dict over the top-level one, and llama3's original_max_position_embeddings
 * defaults to max_position_embeddings. Runs after max_position_embeddings is parsed. */
static int parse_rope(const cJSON *root, peft_llama_config *cfg, const char *what, peft_err *err) {
    const char *key = "rope_scaling";
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rs || cJSON_IsNull(rs)) rs = cJSON_GetObjectItemCaseSensitive(root, key = "rope_parameters");
    double theta = 10000.0;
    int rc = peft_json_double(root, "rope_theta", 0, &theta, what, err);
    if (rc) return rc;
    const char *type = "default";
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must be an object or null", what, key);
        const cJSON *sub;
        cJSON_ArrayForEach(sub, rs) {
            if (cJSON_IsObject(sub)) /* transformers' nesting by layer type ({"full_attention": {...}}) */
                return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"%s\" per layer type (\"%s\") is not supported", what, key,
                                 sub->string);
        }
        double partial = 1.0;
        if ((rc = peft_json_double(rs, "rope_theta", 0, &theta, what, err)) ||
            (rc = peft_json_double(rs, "partial_rotary_factor", 0, &partial, what, err)) ||
            (rc = peft_json_string(rs, "type", 0, &type, what, err)) || (rc = peft_json_string(rs, "rope_type", 0, &type, what, err)))
            return rc;
        if (partial != 1.0)
            return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"%s\" partial_rotary_factor %g is not supported (only 1)", what, key, partial);
    }
    if (!(theta > 1)) return peft_fail(err, PEFT_EFORMAT, "%s: rope_theta must be > 1", what);
    cfg->rope_theta = theta;
    if (!strcmp(type, "default")) return PEFT_OK;
    if (strcmp(type, "llama3"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: %s type \"%s\" is not supported (supported: llama3, default)", what, key, type);
    cfg->rope_llama3 = 1;
    double orig = cfg->max_position_embeddings;
    if ((rc = peft_json_double(rs, "factor", 1, &cfg->rope_factor, what, err)) ||
        (rc = peft_json_double(rs, "low_freq_factor", 1, &cfg->rope_low_freq_factor, what, err)) ||
        (rc = peft_json_double(rs, "high_freq_factor", 1, &cfg->rope_high_freq_factor, what, err)) ||
        (rc = peft_json_double(rs, "original_max_position_embeddings", 0, &orig, what, err)))
        return rc;
    if (cfg->rope_factor <= 0 || cfg->rope_low_freq_factor <= 0 || cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor ||
        !(orig >= 1 && orig <= 1 << 30))
        return peft_fail(err, PEFT_EFORMAT, "%s: %s llama3 needs factor > 0 and high_freq_factor > low_freq_factor > 0", what, key);
    cfg->rope_original_max_pos = (int)orig;
    return PEFT_OK;
}

/* A token id of config.json: an integer in [0, vocab_size) (it indexes the embedding). */
static int token_id(const cJSON *v, const peft_llama_config *cfg, const char *key, int *out, const char *what, peft_err *err) {
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < 0 || d >= cfg->vocab_size)
        return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must hold token ids, integers in [0, vocab_size %d)", what, key, cfg->vocab_size);
    *out = (int)d;
    return PEFT_OK;
}

static int parse_token_ids(const cJSON *root, peft_llama_config *cfg, const char *what, peft_err *err) {
    cfg->bos_token_id = -1;
    cfg->n_eos = 0;
    int rc = PEFT_OK;
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (bos && !cJSON_IsNull(bos)) rc = token_id(bos, cfg, "bos_token_id", &cfg->bos_token_id, what, err);
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), *e;
    if (rc == PEFT_OK && eos && !cJSON_IsNull(eos) && !cJSON_IsArray(eos))
        rc = token_id(eos, cfg, "eos_token_id", &cfg->eos_token_ids[cfg->n_eos++], what, err);
    else if (rc == PEFT_OK && cJSON_IsArray(eos))
        cJSON_ArrayForEach(e, eos) {
            int id;
            if ((rc = token_id(e, cfg, "eos_token_id", &id, what, err))) break;
            if (cfg->n_eos < PEFT_MAX_EOS) cfg->eos_token_ids[cfg->n_eos++] = id;
        }
    return rc;
}

static int parse_config(const cJSON *root, const char *what, peft_llama_config *cfg, peft_err *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(root)) return peft_fail(err, PEFT_EFORMAT, "%s: not a JSON object", what);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *arch0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(arch0)) return peft_fail(err, PEFT_EFORMAT, "%s: missing \"architectures\" (a list of class names)", what);
    size_t k = 0, n_known = sizeof known_archs / sizeof known_archs[0];
    while (k < n_known && strcmp(arch0->valuestring, known_archs[k].name)) k++;
    if (k == n_known)
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: architecture \"%s\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
                         what, arch0->valuestring);
    cfg->arch = known_archs[k].arch;
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", known_archs[k].name);

    const char *act = "silu";
    int rc = peft_json_string(root, "hidden_act", 0, &act, what, err);
    if (rc) return rc;
    if (strcmp(act, "silu")) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"hidden_act\" = \"%s\" (only silu is supported)", what, act);

    const int big = 1 << 24;
    cfg->max_position_embeddings = 2048;
    if ((rc = get_int(root, "vocab_size", 1, 1, big, &cfg->vocab_size, what, err)) ||
        (rc = get_int(root, "hidden_size", 1, 1, 1 << 16, &cfg->hidden_size, what, err)) ||
        (rc = get_int(root, "intermediate_size", 1, 1, 1 << 18, &cfg->intermediate_size, what, err)) ||
        (rc = get_int(root, "num_hidden_layers", 1, 1, 4096, &cfg->n_layers, what, err)) ||
        (rc = get_int(root, "num_attention_heads", 1, 1, 4096, &cfg->n_heads, what, err)) ||
        (rc = get_int(root, "max_position_embeddings", 0, 1, 1 << 24, &cfg->max_position_embeddings, what, err)))
        return rc;
    cfg->n_kv_heads = cfg->n_heads;
    if ((rc = get_int(root, "num_key_value_heads", 0, 1, cfg->n_heads, &cfg->n_kv_heads, what, err))) return rc;
    if (cfg->n_heads % cfg->n_kv_heads)
        return peft_fail(err, PEFT_EFORMAT, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", what,
                         cfg->n_heads, cfg->n_kv_heads);
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    if ((rc = get_int(root, "head_dim", 0, 2, 1 << 12, &cfg->head_dim, what, err))) return rc;
    if (cfg->head_dim > 256) /* the attention kernels keep one head's accumulators on the stack */
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: head_dim %d is above the supported 256", what, cfg->head_dim);
    if (cfg->head_dim % 2) return peft_fail(err, PEFT_EFORMAT, "%s: head_dim %d must be even for RoPE", what, cfg->head_dim);
    if (!cJSON_GetObjectItemCaseSensitive(root, "head_dim") && cfg->hidden_size % cfg->n_heads)
        return peft_fail(err, PEFT_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d and no head_dim is given",
                         what, cfg->hidden_size, cfg->n_heads);

    double eps = 1e-6;
    if ((rc = peft_json_double(root, "rms_norm_eps", 0, &eps, what, err))) return rc;
    if (!((float)eps > 0)) /* eps is used as a float: 1e-85 would be 0 */
        return peft_fail(err, PEFT_EFORMAT, "%s: rms_norm_eps must be > 0 (as a float)", what);
    cfg->rms_norm_eps = (float)eps;
    if ((rc = parse_rope(root, cfg, what, err))) return rc;

    /* HF defaults: Llama and Mistral untied unless stated, Qwen2 tied unless stated (its config
     * class default is False too, but every Qwen2 config states it explicitly). */
    cfg->tie_word_embeddings = 0;
    int attention_bias = 0;
    if ((rc = peft_json_bool(root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, what, err)) ||
        (rc = peft_json_bool(root, "attention_bias", 0, &attention_bias, what, err)) ||
        (rc = peft_json_bool(root, "mlp_bias", 0, &cfg->mlp_bias, what, err)))
        return rc;
    if (cfg->arch == PEFT_ARCH_QWEN2) {
        cfg->qkv_bias = 1; /* Qwen2Attention: q/k/v always biased, o_proj never */
        cfg->o_bias = 0;
        cfg->mlp_bias = 0;
    } else {
        cfg->qkv_bias = cfg->o_bias = attention_bias;
    }
    if (cfg->arch != PEFT_ARCH_LLAMA) {
        int use_sw = cfg->arch == PEFT_ARCH_MISTRAL;
        if ((rc = peft_json_bool(root, "use_sliding_window", 0, &use_sw, what, err))) return rc;
        if (use_sw && (rc = get_int(root, "sliding_window", 0, 0, 1 << 30, &cfg->sliding_window, what, err))) return rc;
        if (!use_sw) cfg->sliding_window = 0;
    }
    if ((rc = parse_token_ids(root, cfg, what, err))) return rc;

    const char *dt = "float32"; /* transformers 5 writes "dtype", earlier versions "torch_dtype" */
    if ((rc = peft_json_string(root, "torch_dtype", 0, &dt, what, err)) || (rc = peft_json_string(root, "dtype", 0, &dt, what, err)))
        return rc;
    cfg->torch_dtype = !strcmp(dt, "bfloat16") ? PEFT_BF16 : !strcmp(dt, "float16") ? PEFT_F16 : PEFT_F32;
    return PEFT_OK;
}

int peft_llama_config_parse(const char *json_text, size_t len, const char *what, peft_llama_config *cfg, peft_err *err) {
    cJSON *root;
    int rc = peft_json_parse(json_text, len, what, &root, err);
    if (rc) return rc;
    rc = parse_config(root, what, cfg, err);
    cJSON_Delete(root);
    return rc;
}

int peft_llama_config_load(const char *path, peft_llama_config *cfg, peft_err *err) {
    char *text;
    size_t len;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    rc = peft_llama_config_parse(text, len, path, cfg, err);
    free(text);
    return rc;
}

void peft_llama_rope_inv_freq(const peft_llama_config *cfg, float *inv_freq) {
    int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* transformers computes base ** (arange(0, dim, 2) / dim) in float32 (int64 arange
         * cast to float), then 1 / that; we follow it in double and round once. */
        double f = 1.0 / pow(cfg->rope_theta, (double)(2 * i) / (double)cfg->head_dim);
        if (cfg->rope_llama3) {
            double low_wavelen = cfg->rope_original_max_pos / cfg->rope_low_freq_factor;
            double high_wavelen = cfg->rope_original_max_pos / cfg->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / cfg->rope_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (cfg->rope_original_max_pos / wavelen - cfg->rope_low_freq_factor) /
                                (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                f = (1.0 - smooth) * f / cfg->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}
