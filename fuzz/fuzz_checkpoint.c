/* fuzz_checkpoint.c: libFuzzer target for the checkpoint reader of `peft train --resume`
 * (peft_st_parse, then peft_checkpoint_restore into a LoRA set on a tiny random Llama):
 * metadata strings (format, step, adamw_step, run signature), tensor names, dtypes, shapes
 * and values. Any input must be refused with an error naming the input, or restore a step in
 * [0, MAX_STEP] with finite parameters and non-negative second moments.
 * PEFT_FUZZ_WRITE_SEED=FILE: the initializer also writes a valid checkpoint of this set to
 * FILE (a seed). Built by fuzz/run.sh. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "methods/adapter_set.h"
#include "tiny_model.h"
#include "train/checkpoint.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)
#define MAX_STEP 40

static peft_llama *model;
static peft_adapter_set *set;
static peft_adamw opt;
/* what peft_run_signature writes, shortened: line-wise comparison and naming of a difference */
static const char SIGNATURE[] = "seed=1\nbatch=2\nmethod=lora\ntarget_modules=q_proj,v_proj\ndata=00000000000000ff\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char dir[] = "/tmp/peft-fuzz-model-XXXXXX";
    peft_err err;
    REQUIRE(mkdtemp(dir) && tiny_model_write(dir, PEFT_F32, 1) == 0 && llama_load(dir, &model, &err) == 0);
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    cfg.opts.rank = 2;
    REQUIRE(peft_adapter_set_create(model, &cfg, 4, &set, &err) == 0);
    REQUIRE(peft_adamw_init(&opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), 0.9, 0.999, 1e-8, 0, &err) == 0);
    const char *seed = getenv("PEFT_FUZZ_WRITE_SEED");
    if (seed) {
        opt.step = 3;
        REQUIRE(peft_checkpoint_save(seed, set, &opt, 3, SIGNATURE, &err) == 0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 20)) return 0;
    unsigned char *copy = malloc(size ? size : 1); /* exactly sized: ASan sees reads past the end */
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    peft_err err = {0};
    peft_st_file *f = NULL;
    int rc = peft_st_parse(copy, size, "fuzz.safetensors", &f, &err);
    long step = -1;
    if (rc == PEFT_OK) rc = peft_checkpoint_restore(f, set, &opt, SIGNATURE, MAX_STEP, &step, &err);
    if (rc != PEFT_OK) {
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz.safetensors"));
    } else {
        REQUIRE(step >= 0 && step <= MAX_STEP && opt.step >= 0 && opt.step <= step);
        peft_named_param *p = peft_adapter_set_params(set);
        for (int i = 0; i < peft_adapter_set_n_params(set); i++)
            for (size_t j = 0; j < p[i].p.numel; j++)
                REQUIRE(isfinite(p[i].p.data[j]) && isfinite(peft_adamw_m(&opt, i)[j]) && peft_adamw_v(&opt, i)[j] >= 0);
    }
    peft_st_close(f);
    free(copy);
    return 0;
}
