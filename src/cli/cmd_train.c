/* cmd_train.c: `peft train`: fine-tune a model with a PEFT method and save the adapter. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "fileio.h"
#include "methods/adapter_set.h"
#include "train/corda_calib.h"
#include "train/data.h"
#include "train/trainer.h"

/* Ranges of the numeric options (also printed by --help). */
#define CLI_MAX_RANK 65536                       /* as adapter_config.json's r */
#define CLI_ALPHA_RANGE CLI_ABOVE(0, 1e6)        /* --alpha and --alpha-pattern values */
#define CLI_MAX_STEPS 1000000000L                /* --steps, --warmup, --eval-every, ... */

static void usage(void) {
    printf(
        "usage: peft train --model DIR --data FILE --out DIR [options]\n"
        "Data (.txt plain text; .jsonl/.json with {text} | {prompt,completion} | Alpaca | {messages}):\n"
        "  --seq-len T          tokens per row (default 256)\n"
        "  --val-data FILE      validate on this file instead of a held-out share of --data\n"
        "  --val-fraction F     share of examples held out for validation (default 0.1)\n"
        "  --no-pack            one example per row instead of packing several\n"
        "  --chat-template NAME chatml | llama3 | llama2 (default: from tokenizer_config.json)\n"
        CLI_TASK_HELP
        "Method:\n"
        "  --method NAME        lora (default); `peft train --methods` lists all\n"
        "  --target LIST        module names, e.g. q_proj,v_proj (default) or all-linear\n"
        "  --target-regex RE    a regex matching whole module names instead of --target\n"
        "  --layers LIST        only these layer indices\n"
        "  --rank R --alpha A   (default 8, 16)\n"
        "  --rank-pattern P     per-module ranks, e.g. 'q_proj=16,down_proj=4' (PEFT rank_pattern)\n"
        "  --alpha-pattern P    per-module alphas, same form\n"
        "  --rslora             scale alpha/sqrt(r) instead of alpha/r\n"
        "  --dropout P          LoRA dropout (default 0)\n"
        "  --init gaussian      A ~ N(0, 1/r) instead of PEFT's Kaiming-uniform\n"
        "  --lora-plus-ratio K  LoRA+: learning rate of B is K x lr (default 1)\n"
        "  --allora [--allora-eta E]  ALLoRA (with --method lora): alpha = r, no dropout, and each\n"
        "                       row's learning rate lr / sqrt(||row||^2 + 1/E^2) (default E 2)\n"
        "  --init-scale X       method-specific initial value (VeRA d_initial, default 0.1)\n"
        "  --feedforward-modules LIST  IA3: modules whose input is scaled (default down_proj)\n"
        "  --num-virtual-tokens N      prompt/prefix tuning: virtual tokens (default 20; part of --seq-len)\n"
        "  --prompt-init-text TEXT     prompt tuning: start from this text's token embeddings\n"
        "  --lisa-activated-layers G   LISA: layers trained at a time (default 2); all their weights\n"
        "  --lisa-interval-steps K     LISA: updates between re-samplings of the layers (default 20)\n"
        "  --corda-calib-data FILE     CorDA: calibration data for the input covariances (any format\n"
        "                       above; default: the training data)\n"
        "  --corda-calib-batches N     CorDA: calibration forwards of --batch rows (default 8)\n"
        "  --save-as-lora       PiSSA/CorDA: write the equivalent rank-2r LoRA of the ORIGINAL model\n"
        "Optimisation:\n"
        "  --steps N | --epochs E   updates (default 100) or passes over the training rows\n"
        "  --batch B --grad-accum K rows per micro-batch (default 4), micro-batches per update (1)\n"
        "  --lr LR --weight-decay WD --warmup N --schedule cosine|linear|constant --clip NORM\n"
        "  --seed S             data order, init and dropout (default 42)\n"
        "  --recompute          gradient checkpointing: less memory, one more forward per step\n"
        CLI_HALF_HELP
        "Output and control:\n"
        "  --eval-every N --eval-batches K  validation every N updates on K micro-batches (0 = all)\n"
        "  --save-every N       crash-safe checkpoint every N updates\n"
        "  --resume             continue from DIR/checkpoint.safetensors\n"
        "  --skip-nonfinite     skip updates whose loss or gradient is NaN/Inf instead of stopping\n"
        "  --no-progress        no progress bar\n"
        "Writes DIR/adapter_config.json + adapter_model.safetensors (HF PEFT format; LISA: the\n"
        "fine-tuned model, config.json + model.safetensors + tokenizer files),\n"
        "DIR/train_log.jsonl, DIR/loss.svg and DIR/checkpoint.safetensors.\n");
}

/* "q_proj=16,v_proj=4" -> patterns; values are read as --rank (integers in [1, CLI_MAX_RANK])
 * or as --alpha (CLI_ALPHA_RANGE). */
static int parse_patterns(const char *s, peft_pattern *out, int *n, const char *what, int ranks, peft_err *err) {
    *n = 0;
    while (s && *s) {
        size_t len = strcspn(s, ","), eq = strcspn(s, "=");
        char value[64];
        if (eq >= len || eq == 0 || eq >= sizeof out->key || len - eq - 1 >= sizeof value || *n == PEFT_MAX_PATTERNS)
            return peft_fail(err, PEFT_EINVAL, "%s: expected NAME=VALUE[,NAME=VALUE...] (at most %d), got '%s'", what,
                             PEFT_MAX_PATTERNS, s);
        memcpy(out[*n].key, s, eq);
        out[*n].key[eq] = '\0';
        memcpy(value, s + eq + 1, len - eq - 1);
        value[len - eq - 1] = '\0';
        long r;
        char range[64];
        if (ranks) snprintf(range, sizeof range, "an integer in [1, %d]", CLI_MAX_RANK);
        else cli_range_str(CLI_ALPHA_RANGE, range, sizeof range);
        if (ranks ? cli_parse_int(value, 1, CLI_MAX_RANK, &r) : cli_parse_real(value, CLI_ALPHA_RANGE, &out[*n].value))
            return peft_fail(err, PEFT_EINVAL, "%s: the value of %s must be %s%s, got '%s'", what, out[*n].key,
                             ranks ? "" : "a number in ", range, value);
        if (ranks) out[*n].value = (double)r;
        (*n)++;
        s += len + (s[len] == ',');
    }
    return PEFT_OK;
}

static int parse_layers(const char *s, peft_adapter_config *cfg, peft_err *err) {
    int32_t *ids;
    size_t n;
    int rc = cli_parse_ids(s, "--layers", &ids, &n, err);
    if (rc) return rc;
    if (n > 64) rc = peft_fail(err, PEFT_EINVAL, "--layers: at most 64 layers");
    for (size_t i = 0; rc == PEFT_OK && i < n; i++) cfg->layers_to_transform[cfg->n_layers_to_transform++] = ids[i];
    free(ids);
    return rc;
}

/* PEFT's TEXT init of prompt tuning: the text's token embeddings (with the tokenizer's
 * special tokens, as tokenizer(text) gives them), repeated or cut to n_virtual rows. */
static int prompt_init_rows(const cli_model *cm, const char *text, int n_virtual, float **rows, peft_err *err) {
    int32_t *ids;
    size_t n;
    int rc = peft_tokenizer_encode(cm->tok, text, strlen(text), 1, &ids, &n, err);
    if (rc) return rc;
    int C = cm->model->info.hidden_size;
    *rows = n ? malloc((size_t)n_virtual * C * sizeof(float)) : NULL;
    if (!n) rc = peft_fail(err, PEFT_EINVAL, "--prompt-init-text encodes to no tokens");
    else if (!*rows) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    else if (!cm->model->tok_embed) rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: the model has no token embedding", cm->model->dir);
    for (int i = 0; rc == PEFT_OK && i < n_virtual; i++)
        memcpy(*rows + (size_t)i * C, cm->model->tok_embed + (size_t)ids[i % n] * C, (size_t)C * sizeof(float));
    free(ids);
    return rc;
}

/* CorDA's calibration pass over `path` (the training split of the training data, or all of a
 * separate calibration file), before the adapters are created from its covariances. */
static int corda_calibration(const cli_model *cm, const peft_adapter_config *acfg, const char *path, peft_data_opts dopts,
                             int separate_file, int batch, int n_batches, peft_corda_covs **covs, peft_err *err) {
    if (separate_file) dopts.val_fraction = 0;
    peft_dataset *cds;
    int rc = peft_dataset_load(path, cm->tok, &dopts, &cds, err);
    if (rc) return rc;
    fprintf(stderr, "CorDA calibration: %d batches of %d rows x %d tokens from %s\n", n_batches, batch, dopts.seq_len, path);
    rc = peft_corda_calibrate(cm->model, acfg, cds, batch, dopts.seq_len, n_batches, covs, err);
    peft_dataset_free(cds);
    return rc;
}

/* A method that reads the base weight (reads_base) trains on f32 copies of the block-form
 * weights it targets (peft_model_dequantize_sites), made before it is created. */
static int dequantize_targets(peft_model *m, const peft_adapter_config *acfg, peft_err *err) {
    peft_site **sites = malloc((size_t)m->n_sites * sizeof *sites);
    int n = 0, rc = sites ? peft_adapter_set_targets(m, acfg, sites, &n, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) rc = peft_model_dequantize_sites(m, sites, n, err);
    free(sites);
    return rc;
}

int cmd_train(int argc, char **argv) {
    cli_args a;
    args_init(&a, "train", argc, argv);
    if (args_has(&a, "--methods")) {
        for (int i = 0; peft_methods[i]; i++)
            if (peft_methods[i]->trains_base) printf("%-12s (writes the fine-tuned model)\n", peft_methods[i]->name);
            else printf("%-12s (adapter_config peft_type %s)\n", peft_methods[i]->name, peft_methods[i]->peft_type);
        return 0;
    }
    const char *dir = args_str(&a, "--model", NULL), *data = args_str(&a, "--data", NULL), *out = args_str(&a, "--out", NULL),
               *val_data = args_str(&a, "--val-data", NULL);
    peft_adapter_config acfg;
    peft_adapter_config_default(&acfg);
    snprintf(acfg.method, sizeof acfg.method, "%s", args_str(&a, "--method", "lora"));
    const char *target = args_str(&a, "--target", NULL), *target_re = args_str(&a, "--target-regex", NULL);
    const char *layers = args_str(&a, "--layers", NULL), *rank_pat = args_str(&a, "--rank-pattern", NULL),
               *alpha_pat = args_str(&a, "--alpha-pattern", NULL), *init = args_str(&a, "--init", "kaiming");
    acfg.opts.rank = (int)args_int(&a, "--rank", 8, 1, CLI_MAX_RANK);
    acfg.opts.alpha = args_real(&a, "--alpha", 16, CLI_ALPHA_RANGE);
    acfg.opts.use_rslora = args_has(&a, "--rslora");
    acfg.opts.dropout = args_real(&a, "--dropout", 0.0, CLI_BELOW(0, 1));
    acfg.opts.init_scale = args_real(&a, "--init-scale", 0.1, CLI_CLOSED(-1e6, 1e6));
    acfg.opts.n_virtual = (int)args_int(&a, "--num-virtual-tokens", 20, 1, CLI_MAX_SEQ - 2);
    const char *init_text = args_str(&a, "--prompt-init-text", NULL);
    acfg.opts.lisa_gamma = (int)args_int(&a, "--lisa-activated-layers", acfg.opts.lisa_gamma, 1, 65536);
    acfg.opts.lisa_interval = args_int(&a, "--lisa-interval-steps", acfg.opts.lisa_interval, 1, CLI_MAX_STEPS);
    int lisa = !strcmp(acfg.method, "lisa");
    snprintf(acfg.opts.feedforward_modules, sizeof acfg.opts.feedforward_modules, "%s",
             args_str(&a, "--feedforward-modules", "down_proj"));
    const char *calib_data = args_str(&a, "--corda-calib-data", NULL);
    int calib_batches = (int)args_int(&a, "--corda-calib-batches", 8, 1, 1000000), corda = !strncmp(acfg.method, "corda_", 6);
    acfg.save_as_lora = args_has(&a, "--save-as-lora");

    peft_train_opts o;
    peft_train_opts_default(&o);
    peft_data_opts dopts = {0};
    o.seq_len = dopts.seq_len = (int)args_int(&a, "--seq-len", 256, 2, CLI_MAX_SEQ);
    dopts.val_fraction = args_real(&a, "--val-fraction", 0.1, CLI_BELOW(0, 1));
    dopts.pack = !args_has(&a, "--no-pack");
    dopts.chat_template = args_str(&a, "--chat-template", NULL);
    o.batch = (int)args_int(&a, "--batch", 4, 1, CLI_MAX_BATCH);
    o.grad_accum = (int)args_int(&a, "--grad-accum", 1, 1, 65536);
    o.steps = args_int(&a, "--steps", 100, 1, CLI_MAX_STEPS);
    double epochs = args_real(&a, "--epochs", 0, CLI_ABOVE(0, 1e6));
    /* any positive float: an update that overflows the weights is the trainer's to stop */
    o.lr = args_real(&a, "--lr", 2e-4, CLI_ABOVE(0, 1e38));
    o.weight_decay = args_real(&a, "--weight-decay", 0.0, CLI_CLOSED(0, 10));
    o.warmup = args_int(&a, "--warmup", 0, 0, CLI_MAX_STEPS);
    const char *sched = args_str(&a, "--schedule", "cosine");
    o.max_grad_norm = args_real(&a, "--clip", 1.0, CLI_CLOSED(0, 1e9)); /* 0: no clipping */
    o.lr_ratio_b = args_real(&a, "--lora-plus-ratio", 1.0, CLI_ABOVE(0, 1e6));
    /* ALLoRA fixes the LoRA scale to 1 and drops dropout: options that set them conflict. */
    int allora = args_has(&a, "--allora"), eta_given = args_str(&a, "--allora-eta", NULL) != NULL;
    int allora_conflict = args_str(&a, "--alpha", NULL) || args_str(&a, "--dropout", NULL) || args_has(&a, "--rslora") || alpha_pat;
    double eta = args_real(&a, "--allora-eta", 2.0, CLI_ABOVE(0, 1e6));
    o.allora_eta = allora ? eta : 0.0;
    o.seed = (uint64_t)args_int(&a, "--seed", 42, 0, LONG_MAX);
    o.recompute = args_has(&a, "--recompute");
    cli_precision prec;
    cli_precision_args(&a, &prec);
    const char *quantize = prec.quantize = args_str(&a, "--quantize", NULL);
    int half = prec.asked == CLI_PREC_BF16 || prec.asked == CLI_PREC_F16;
    o.eval_every = args_int(&a, "--eval-every", 0, 0, CLI_MAX_STEPS);
    o.eval_batches = (int)args_int(&a, "--eval-batches", 0, 0, 1000000);
    o.save_every = args_int(&a, "--save-every", 0, 0, CLI_MAX_STEPS);
    o.resume = args_has(&a, "--resume");
    o.skip_nonfinite = args_has(&a, "--skip-nonfinite");
    o.progress = !args_has(&a, "--no-progress") && isatty(2);
    o.out_dir = out;
    peft_model_load_opts lo = {0};
    cli_task_args(&a, &lo);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    int sk = peft_schedule_parse(sched);
    const char *usage_error = !dir ? "--model DIR is required" : !data ? "--data FILE is required" : !out ? "--out DIR is required"
                            : sk < 0 ? "--schedule must be cosine, linear or constant"
                            : strcmp(init, "kaiming") && strcmp(init, "gaussian") ? "--init must be kaiming or gaussian"
                            : target && target_re ? "give at most one of --target / --target-regex" : NULL;
    if (usage_error) {
        fprintf(stderr, "peft train: %s (see peft train --help)\n", usage_error);
        return 2;
    }
    if (allora && (strcmp(acfg.method, "lora") || allora_conflict)) {
        fprintf(stderr, "peft train: --allora trains LoRA (--method lora) with alpha = r and no dropout: leave out --alpha, "
                        "--alpha-pattern, --dropout and --rslora\n");
        return 2;
    }
    if ((calib_data || args_str(&a, "--corda-calib-batches", NULL)) && !corda) {
        fprintf(stderr, "peft train: --corda-calib-data / --corda-calib-batches are for --method corda_ipm or corda_kpm\n");
        return 2;
    }
    if (eta_given && !allora) {
        fprintf(stderr, "peft train: --allora-eta needs --allora\n");
        return 2;
    }
    /* LISA trains whole layers of its own choosing, in place in the f32 weights, and writes
     * the model: its output must not replace the base checkpoint. */
    if (lisa && ((target && strcmp(target, "all-linear")) || target_re || layers || half || (quantize && strcmp(quantize, "none")) ||
                 peft_same_path(dir, out))) {
        fprintf(stderr, "peft train: --method lisa trains every module of the layers it samples (no --target other than all-linear, "
                        "no --target-regex or --layers), in f32 (no --bf16/--f16/--precision bf16 or f16/--quantize), and writes the model to --out, which must differ from "
                        "--model\n");
        return 2;
    }
    if (lisa) snprintf(acfg.target_modules, sizeof acfg.target_modules, "all-linear");
    o.schedule = (peft_schedule)sk;
    dopts.seed = acfg.opts.seed = o.seed;
    acfg.opts.init_gaussian = !strcmp(init, "gaussian");
    if (target_re) acfg.target_regex = 1;
    if (target || target_re) snprintf(acfg.target_modules, sizeof acfg.target_modules, "%s", target ? target : target_re);
    snprintf(acfg.base_model, sizeof acfg.base_model, "%s", dir);

    peft_err err = {0};
    if ((rank_pat && parse_patterns(rank_pat, acfg.rank_pattern, &acfg.n_rank_pattern, "--rank-pattern", 1, &err)) ||
        (alpha_pat && parse_patterns(alpha_pat, acfg.alpha_pattern, &acfg.n_alpha_pattern, "--alpha-pattern", 0, &err)) ||
        (layers && parse_layers(layers, &acfg, &err))) {
        fprintf(stderr, "peft train: %s\n", err.msg);
        return 2;
    }
    if (allora) { /* scale alpha / r = 1 at every site, per-module ranks included */
        acfg.opts.alpha = acfg.opts.rank;
        acfg.opts.dropout = 0;
        acfg.opts.use_rslora = 0;
        memcpy(acfg.alpha_pattern, acfg.rank_pattern, sizeof acfg.alpha_pattern);
        acfg.n_alpha_pattern = acfg.n_rank_pattern;
    }
    cli_model cm;
    const peft_method *method = peft_method_find(acfg.method);
    if (cli_precision_resolve(&prec, dir, lisa || (method && method->trains_base), &err)) return cli_report(err.msg);
    lo.keep_blocks = prec.keep_blocks;
    if (cli_model_load_ex(dir, NULL, &lo, &cm, &err)) return cli_report(err.msg);
    int cls = lo.task != PEFT_TASK_CAUSAL_LM;
    if (!cm.tok && lo.task != PEFT_TASK_IMAGE_CLS) {
        cli_model_free(&cm);
        return cli_report("the model directory has no tokenizer.json; training data must be tokenized");
    }
    for (int i = 0; i < acfg.n_layers_to_transform; i++)
        if (acfg.layers_to_transform[i] >= cm.model->info.n_layers) {
            rc = peft_fail(&err, PEFT_EINVAL, "--layers: layer %d is out of range: %s has %d layers (0 .. %d)",
                           acfg.layers_to_transform[i], dir, cm.model->info.n_layers, cm.model->info.n_layers - 1);
            cli_model_free(&cm);
            return cli_report(err.msg);
        }
    peft_dataset *ds = NULL, *val = NULL;
    peft_cls_dataset *cds = NULL, *cval = NULL;
    peft_adapter_set *set = NULL;
    float *init_rows = NULL;
    if (val_data) dopts.val_fraction = 0;
    if (init_text) { /* prompt tuning's TEXT init */
        rc = prompt_init_rows(&cm, init_text, acfg.opts.n_virtual, &init_rows, &err);
        acfg.opts.init_rows = init_rows;
        snprintf(acfg.opts.init_text, sizeof acfg.opts.init_text, "%s", init_text);
    }
    peft_corda_covs *covs = NULL;
    if (rc == PEFT_OK && cls && (corda || init_text))
        rc = peft_fail(&err, PEFT_EUNSUPPORTED, "--task %s: CorDA's calibration and --prompt-init-text read causal-LM data",
                       peft_task_name(lo.task));
    if (rc == PEFT_OK && corda) {
        rc = corda_calibration(&cm, &acfg, calib_data ? calib_data : data, dopts, calib_data != NULL, o.batch, calib_batches, &covs, &err);
        acfg.opts.corda_covs = covs;
    }
    if (rc == PEFT_OK && method && method->reads_base) rc = dequantize_targets(cm.model, &acfg, &err);
    if (rc == PEFT_OK) rc = cli_blocks_hint(cm.model, peft_adapter_set_create(cm.model, &acfg, o.batch * o.seq_len, &set, &err), &err);
    peft_corda_covs_free(covs);
    if (rc == PEFT_OK) rc = cli_precision_apply(cm.model, &prec, 1, &err);
    int nv = cm.model->virt.n_virtual;
    if (rc == PEFT_OK && nv && cls)
        rc = peft_fail(&err, PEFT_EUNSUPPORTED, "--task %s: virtual tokens (prompt / prefix tuning) are for causal-lm",
                       peft_task_name(lo.task));
    if (rc == PEFT_OK && cls) {
        rc = cli_cls_load(&cm, data, o.seq_len, &cds, &err);
        if (rc == PEFT_OK && val_data) rc = cli_cls_load(&cm, val_data, o.seq_len, &cval, &err);
    } else if (rc == PEFT_OK && nv) {
        /* Virtual tokens (prompt/prefix tuning) start every row: the data gets the rest, one
         * example per row (a packed second example could not see them). */
        dopts.seq_len = o.seq_len - nv;
        dopts.pack = 0;
        if (dopts.seq_len < 2) rc = peft_fail(&err, PEFT_EINVAL, "--seq-len %d leaves no room after %d virtual tokens", o.seq_len, nv);
    }
    if (rc == PEFT_OK && !cls) rc = peft_dataset_load(data, cm.tok, &dopts, &ds, &err);
    if (rc == PEFT_OK && !cls && val_data) {
        rc = peft_dataset_load(val_data, cm.tok, &dopts, &val, &err);
        o.val_data = val;
    }
    int n_train = rc != PEFT_OK ? 0 : cls ? cds->n : peft_dataset_rows(ds, 0);
    int n_val = rc != PEFT_OK ? 0 : cls ? (cval ? cval->n : 0) : val ? peft_dataset_rows(val, 0) : peft_dataset_rows(ds, 1);
    if (rc == PEFT_OK && epochs > 0) {
        double steps = ceil(epochs * n_train / ((double)o.batch * o.grad_accum));
        if (steps > (double)CLI_MAX_STEPS)
            rc = peft_fail(&err, PEFT_EINVAL, "--epochs %g makes %.0f updates, more than %ld", epochs, steps, CLI_MAX_STEPS);
        o.steps = steps < 1 ? 1 : (long)fmin(steps, (double)CLI_MAX_STEPS);
    }
    peft_dist dist = {0, 1}; /* under mpirun: this process's rank in the job sharing each update */
    if (rc == PEFT_OK) rc = peft_dist_init(&dist, &err);
    o.dist = &dist;
    if (rc == PEFT_OK) {
        size_t trainable = peft_adapter_set_numel(set);
        if (dist.rank == 0)
            fprintf(stderr, "%s: %s on %d modules, %zu trainable parameters (%.3f%% of %zu); %d train / %d validation rows of %d tokens\n",
                    dir, acfg.method, peft_adapter_set_n_sites(set), trainable, 100.0 * trainable / cm.model->n_params,
                    cm.model->n_params, n_train, n_val, o.seq_len);
        peft_train_result res;
        rc = cls ? peft_train_cls(cm.model, set, cds, cval, &o, &res, &err) : peft_train(cm.model, set, ds, &o, &res, &err);
        if (rc == PEFT_OK && dist.rank == 0) {
            /* without validation rows the losses are NaN: say nothing about validation */
            printf("steps %ld  train loss %.4f", res.steps_done, res.final_train_loss);
            if (!isnan(res.first_val_loss)) printf("  validation loss %.4f ->", res.first_val_loss);
            if (!isnan(res.final_val_loss)) printf("%s %.4f", isnan(res.first_val_loss) ? "  validation loss" : "", res.final_val_loss);
            printf("  %.0f tokens/s%s\n", res.tokens_per_s, res.skipped_steps ? "  (some steps skipped)" : "");
            printf("%s written to %s\n", lisa ? "fine-tuned model" : "adapter", out);
        }
    }
    peft_dist_finalize(&dist);
    peft_adapter_set_free(set);
    peft_dataset_free(ds);
    peft_dataset_free(val);
    peft_cls_free(cds);
    peft_cls_free(cval);
    free(init_rows);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
