/* cmd_combine.c: `peft combine`: several LoRA adapters of one base model combined into one,
 * as HF PEFT's add_weighted_adapter (methods/combine.h, docs/combine.md). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "fileio.h"
#include "methods/adapter_set.h"
#include "methods/combine.h"

#define MAX_ADAPTERS 64
#define WEIGHT_RANGE CLI_CLOSED(-1e6, 1e6)

static void usage(void) {
    printf("usage: peft combine --model DIR --adapter A --adapter B [...] --weights wA,wB[,...] --type TYPE --out DIR\n"
           "  Combines LoRA adapters of the model in DIR into one LoRA adapter, as HF PEFT's\n"
           "  add_weighted_adapter (docs/combine.md); the result loads with --adapter and PeftModel.from_pretrained.\n"
           "  --adapter DIR        a LoRA adapter (repeat: 1 to %d)\n"
           "  --weights LIST       one weight per adapter, comma-separated, in [-1e6, 1e6] (negative subtracts)\n"
           "  --type TYPE          %s (default svd)\n"
           "  --density D          fraction kept by ties*, dare_*, magnitude_prune* (required there)\n"
           "  --majority-sign-method total|frequency   sign election of ties* and dare_ties* (default total)\n"
           "  --svd-rank R         rank of an *svd result (default: the largest adapter rank)\n"
           "  --svd-clamp Q        clamp the *svd factors to the Q quantile of their entries\n"
           "  --seed S             DARE's random masks (dare_*)\n",
           MAX_ADAPTERS, peft_combine_type_names);
}

/* Every `--adapter DIR` in order (args_str keeps only the last), marked used. */
static int adapter_dirs(cli_args *a, const char **dirs, int *n) {
    *n = 0;
    for (int i = 1; i < a->argc; i++) {
        if (strcmp(a->argv[i], "--adapter")) continue;
        const char *v = i + 1 < a->argc ? a->argv[i + 1] : NULL;
        if (!v || !strncmp(v, "--", 2)) {
            fprintf(stderr, "peft combine: --adapter needs a directory\n");
            return 2;
        }
        if (*n == MAX_ADAPTERS) {
            fprintf(stderr, "peft combine: at most %d adapters\n", MAX_ADAPTERS);
            return 2;
        }
        a->used[i] = a->used[i + 1] = 1;
        dirs[(*n)++] = v;
        i++;
    }
    return 0;
}

/* "0.5,-1,2" into w[]: exactly n numbers in WEIGHT_RANGE. */
static int parse_weights(const char *s, double *w, int n) {
    int k = 0;
    char buf[64];
    for (const char *p = s;; p++) {
        size_t len = strcspn(p, ",");
        if (k == n || len == 0 || len >= sizeof buf) break;
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (cli_parse_real(buf, WEIGHT_RANGE, &w[k]) != 0) break;
        k++;
        p += len;
        if (!*p) {
            if (k == n) return 0;
            break;
        }
    }
    char range[64];
    fprintf(stderr, "peft combine: --weights \"%s\" must be %d comma-separated numbers in %s, one per --adapter\n", s, n,
            cli_range_str(WEIGHT_RANGE, range, sizeof range));
    return 2;
}

/* The options that only some types take, given for another type: a usage error. */
static const char *misplaced_option(cli_args *a, const peft_combine_opts *o) {
    if (args_str(a, "--density", NULL) && !peft_combine_uses_density(o)) return "--density is for ties*, dare_* and magnitude_prune*";
    if (!args_str(a, "--density", NULL) && peft_combine_uses_density(o)) return "this type needs --density";
    if (args_str(a, "--majority-sign-method", NULL) && !peft_combine_uses_sign(o))
        return "--majority-sign-method is for ties, ties_svd, dare_ties and dare_ties_svd";
    if ((args_str(a, "--svd-rank", NULL) || args_str(a, "--svd-clamp", NULL)) && !o->svd)
        return "--svd-rank and --svd-clamp are for the *svd types";
    if (args_str(a, "--seed", NULL) && !peft_combine_uses_seed(o)) return "--seed is for the dare_* types";
    if ((o->merge == PEFT_MERGE_DARE_LINEAR || o->merge == PEFT_MERGE_DARE_TIES) && o->density == 0)
        return "dare_* types need --density above 0 (kept values are divided by it)";
    return NULL;
}

int cmd_combine(int argc, char **argv) {
    cli_args a;
    args_init(&a, "combine", argc, argv);
    const char *dirs[MAX_ADAPTERS];
    int n = 0, rc = adapter_dirs(&a, dirs, &n);
    if (rc) return rc;
    const char *model = args_str(&a, "--model", NULL), *out = args_str(&a, "--out", NULL), *wlist = args_str(&a, "--weights", NULL);
    const char *type = args_str(&a, "--type", "svd"), *sign = args_str(&a, "--majority-sign-method", "total");
    peft_combine_opts o = {0};
    o.density = args_real(&a, "--density", 1.0, CLI_CLOSED(0, 1));
    o.svd_rank = (int)args_int(&a, "--svd-rank", 0, 0, 65536);
    int clamp = args_str(&a, "--svd-clamp", NULL) != NULL;
    double q = args_real(&a, "--svd-clamp", 1.0, CLI_CLOSED(0, 1));
    o.svd_clamp = clamp ? q : -1; /* negative: no clamp */
    o.seed = (uint64_t)args_int(&a, "--seed", 0, 0, LONG_MAX);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int bad_type = peft_combine_type_parse(type, &o);
    const char *problem = !model ? "--model DIR is required" : !out ? "--out DIR is required" : n == 0 ? "give at least one --adapter"
                        : !wlist ? "--weights is required (one per --adapter)"
                        : bad_type ? "unknown --type"
                        : strcmp(sign, "total") && strcmp(sign, "frequency") ? "--majority-sign-method must be total or frequency"
                                                                             : misplaced_option(&a, &o);
    if ((rc = args_finish(&a))) return rc;
    if (problem) {
        fprintf(stderr, "peft combine: %s (see peft combine --help; types: %s)\n", problem, peft_combine_type_names);
        return 2;
    }
    o.majority_frequency = !strcmp(sign, "frequency");
    double w[MAX_ADAPTERS];
    if ((rc = parse_weights(wlist, w, n))) return rc;
    for (int i = 0; i < n; i++)
        if (peft_same_path(dirs[i], out)) {
            fprintf(stderr, "peft combine: --out must differ from the adapter %s (it is read, not replaced)\n", dirs[i]);
            return 2;
        }
    peft_err err = {0};
    peft_model *m;
    peft_model_load_opts lo = {.task = PEFT_TASK_CAUSAL_LM, .shapes_only = 1}; /* the factors need no base weights */
    if ((rc = peft_model_load(model, &lo, &m, &err))) return cli_report(err.msg);
    peft_adapter_set *set;
    rc = peft_combine_adapters(m, dirs, w, n, &o, &set, &err);
    if (rc == PEFT_OK) {
        rc = peft_adapter_set_save(set, out, &err);
        if (rc == PEFT_OK)
            printf("combined %d adapters (%s) into %s: %d modules, rank %d\n", n, n == 1 ? "linear" : type, out,
                   peft_adapter_set_n_sites(set), peft_adapter_set_config(set)->opts.rank);
        peft_adapter_set_free(set);
    }
    peft_model_free(m);
    return rc ? cli_report(err.msg) : 0;
}
