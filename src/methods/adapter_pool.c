/* adapter_pool.c: many adapters on one base, chosen per row (see adapter_pool.h).
 *
 * Every site of the model carries one "pool" adapter (pool_site) for the pool's lifetime.
 * Each loaded adapter is an ordinary adapter set (peft_adapter_set_load) whose per-site
 * adapters the pool keeps in its slot (slot.at[site]) instead of on the sites. At a site the
 * base term x W^T + b has already been computed for all N rows by site_forward; the pool's
 * forward then visits the row groups set_rows formed (rows sharing an adapter, ascending):
 *   xg = x[rows], yg = y[rows]          [n, in], [n, out]   (gathered; not when contiguous)
 *   forward of the group's adapter on (yg, xg): LoRA/VeRA add their term, DoRA rescales the
 *     base part per output column, IA3 recomputes its scaled product (forward_replaces_base)
 *   y[rows] = yg                        (scattered back)
 * so each row sees exactly what its adapter alone would compute; a group's adapter without
 * a term at this site (other targets) is skipped, as are base rows (-1). */
#include "adapter_pool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/adapter_set.h"

/* Methods whose output for a row depends on that row alone (no cross-row state, no model-level
 * hook, no change to the base weights at creation as PiSSA's residual). */
static const char *const mixable[] = {"lora", "dora", "ia3", "vera"};

typedef struct pool_slot {
    char *name;            /* NULL: a free slot */
    peft_adapter_set *set; /* owns the adapters below */
    peft_adapter **at;     /* [n_sites] the adapter at each site (m->sites order), or NULL */
} pool_slot;

typedef struct pool_site {
    peft_adapter base;
    peft_adapter_pool *pool;
    int site; /* index into m->sites */
} pool_site;

struct peft_adapter_pool {
    peft_model *m;
    int max_rows, n_sites;
    pool_site *sites;   /* [n_sites], attached as the sites' adapters */
    int n_slots;
    pool_slot *slots;   /* [n_slots] */
    /* The rows of the next forwards, grouped by adapter: group g is rows
     * order[start[g] .. start[g]+len[g]-1] (ascending), all using slot group_slot[g]. */
    int n_groups;
    int *order;         /* [max_rows] */
    int *group_slot, *group_start, *group_len; /* [max_rows] each */
    int64_t *keys;      /* [max_rows] sort scratch: slot * max_rows + row */
    float *xg, *yg;     /* [max_rows, max in_features], [max_rows, max out_features] */
};

extern const peft_method peft_method_pool;

static void pool_forward(peft_adapter *a, const peft_site *s, float *y, const float *x, int N, int save) {
    (void)save; /* inference only: the pool has no backward */
    pool_site *ps = (pool_site *)a;
    peft_adapter_pool *p = ps->pool;
    size_t in = (size_t)s->in_features, out = (size_t)s->out_features;
    for (int g = 0; g < p->n_groups; g++) {
        peft_adapter *ad = p->slots[p->group_slot[g]].at[ps->site];
        const int *rows = p->order + p->group_start[g];
        int n = 0;
        while (n < p->group_len[g] && rows[n] < N) n++; /* a shorter forward: only its rows */
        if (!ad || n == 0) continue;
        if (rows[n - 1] - rows[0] == n - 1) { /* contiguous rows (a prefill, a sorted batch): in place */
            ad->method->forward(ad, s, y + rows[0] * out, x + rows[0] * in, n, 0);
            continue;
        }
        for (int i = 0; i < n; i++) {
            memcpy(p->xg + i * in, x + rows[i] * in, in * sizeof(float));
            memcpy(p->yg + i * out, y + rows[i] * out, out * sizeof(float));
        }
        ad->method->forward(ad, s, p->yg, p->xg, n, 0);
        for (int i = 0; i < n; i++) memcpy(y + rows[i] * out, p->yg + i * out, out * sizeof(float));
    }
}

/* Pool adapters live in the pool's sites array: nothing to free one by one. */
static void pool_destroy(peft_adapter *a) { (void)a; }

const peft_method peft_method_pool = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "pool",
    .destroy = pool_destroy,
    .forward = pool_forward,
    /* A DoRA or IA3 adapter loaded later reads the f32 weight: keep it under peft_model_use_half /
     * peft_model_quantize. */
    .reads_base = 1,
};

int peft_adapter_pool_create(peft_model *m, int max_rows, peft_adapter_pool **out, peft_err *err) {
    *out = NULL;
    if (max_rows < 1) return peft_fail(err, PEFT_EINVAL, "adapter pool: max_rows %d must be at least 1", max_rows);
    int n = m->n_sites, max_in = 0, max_out = 0;
    for (int i = 0; i < n; i++) {
        const peft_site *s = m->sites[i];
        if (s->adapter) return peft_fail(err, PEFT_EINVAL, "adapter pool: %s already carries an adapter", s->name);
        if (s->in_features > max_in) max_in = s->in_features;
        if (s->out_features > max_out) max_out = s->out_features;
    }
    peft_adapter_pool *p = calloc(1, sizeof *p);
    size_t R = (size_t)max_rows;
    if (!p || !(p->sites = calloc((size_t)n, sizeof *p->sites)) || !(p->order = malloc(4 * R * sizeof(int))) ||
        !(p->keys = malloc(R * sizeof *p->keys)) || !(p->xg = malloc(R * max_in * sizeof(float))) ||
        !(p->yg = malloc(R * max_out * sizeof(float)))) {
        peft_adapter_pool_free(p);
        return peft_fail(err, PEFT_ENOMEM, "adapter pool: out of memory for %d rows", max_rows);
    }
    p->group_slot = p->order + R;
    p->group_start = p->group_slot + R;
    p->group_len = p->group_start + R;
    p->m = m;
    p->max_rows = max_rows;
    p->n_sites = n;
    for (int i = 0; i < n; i++) {
        p->sites[i] = (pool_site){.base = {.method = &peft_method_pool}, .pool = p, .site = i};
        m->sites[i]->adapter = &p->sites[i].base;
    }
    *out = p;
    return PEFT_OK;
}

int peft_adapter_pool_find(const peft_adapter_pool *p, const char *name) {
    for (int i = 0; i < p->n_slots; i++)
        if (p->slots[i].name && !strcmp(p->slots[i].name, name)) return i;
    return -1;
}

int peft_adapter_pool_count(const peft_adapter_pool *p) { return p->n_slots; }

const char *peft_adapter_pool_name(const peft_adapter_pool *p, int i) {
    return i >= 0 && i < p->n_slots ? p->slots[i].name : NULL;
}

/* The method of DIR's adapter_config.json, refused unless it can be mixed. */
static int check_mixable(const char *dir, peft_err *err) {
    peft_adapter_config cfg;
    int rc = peft_adapter_config_read(dir, &cfg, err);
    if (rc) return rc;
    for (size_t i = 0; i < sizeof mixable / sizeof mixable[0]; i++)
        if (!strcmp(cfg.method, mixable[i])) return PEFT_OK;
    return peft_fail(err, PEFT_EUNSUPPORTED, "%s/adapter_config.json: %s adapters cannot be mixed per row (mixable: LoRA, DoRA, IA3, VeRA)",
                     dir, cfg.method);
}

/* Points every site at its own pool adapter again (a set was loaded or freed meanwhile). */
static void attach_pool(peft_adapter_pool *p) {
    for (int i = 0; i < p->n_sites; i++) p->m->sites[i]->adapter = &p->sites[i].base;
}

int peft_adapter_pool_load(peft_adapter_pool *p, const char *name, const char *dir, peft_err *err) {
    if (!name || !*name || !strcmp(name, "__base__"))
        return peft_fail(err, PEFT_EINVAL, "adapter pool: \"%s\" cannot name an adapter", name ? name : "");
    if (peft_adapter_pool_find(p, name) >= 0)
        return peft_fail(err, PEFT_EINVAL, "adapter pool: the name \"%s\" is in use", name);
    int rc = check_mixable(dir, err);
    if (rc) return rc;
    int k = 0;
    while (k < p->n_slots && p->slots[k].name) k++;
    if (k == p->n_slots) {
        pool_slot *grown = realloc(p->slots, (size_t)(k + 1) * sizeof *grown);
        if (!grown) return peft_fail(err, PEFT_ENOMEM, "out of memory");
        p->slots = grown;
        p->slots[k] = (pool_slot){0};
        p->n_slots = k + 1;
    }
    pool_slot sl = {.name = strdup(name), .at = calloc((size_t)p->n_sites, sizeof(peft_adapter *))};
    if (!sl.name || !sl.at) {
        free(sl.name), free(sl.at);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    /* The set attaches its adapters to bare sites: take the pool's off for the load, then move
     * the new adapters into the slot. */
    for (int i = 0; i < p->n_sites; i++) p->m->sites[i]->adapter = NULL;
    rc = peft_adapter_set_load(dir, p->m, p->max_rows, &sl.set, err);
    for (int i = 0; i < p->n_sites && rc == PEFT_OK; i++) sl.at[i] = p->m->sites[i]->adapter;
    attach_pool(p);
    if (rc) {
        free(sl.name), free(sl.at);
        return rc;
    }
    p->slots[k] = sl;
    return PEFT_OK;
}

int peft_adapter_pool_unload(peft_adapter_pool *p, const char *name, peft_err *err) {
    int k = peft_adapter_pool_find(p, name);
    if (k < 0) return peft_fail(err, PEFT_EINVAL, "adapter pool: no adapter \"%s\"", name);
    pool_slot *sl = &p->slots[k];
    /* peft_adapter_set_free destroys the adapters it finds on its sites: hand them back first. */
    for (int i = 0; i < p->n_sites; i++)
        if (sl->at[i]) p->m->sites[i]->adapter = sl->at[i];
    peft_adapter_set_free(sl->set);
    attach_pool(p);
    free(sl->name), free(sl->at);
    *sl = (pool_slot){0};
    int kept = 0; /* its rows fall back to the base until set again */
    for (int g = 0; g < p->n_groups; g++)
        if (p->group_slot[g] != k) {
            p->group_slot[kept] = p->group_slot[g];
            p->group_start[kept] = p->group_start[g];
            p->group_len[kept++] = p->group_len[g];
        }
    p->n_groups = kept;
    return PEFT_OK;
}

static int cmp_key(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int peft_adapter_pool_set_rows(peft_adapter_pool *p, const int *row_adapter, int N, peft_err *err) {
    if (N < 0 || N > p->max_rows) return peft_fail(err, PEFT_EINVAL, "adapter pool: %d rows (the pool is for up to %d)", N, p->max_rows);
    int n = 0;
    for (int r = 0; r < N; r++) {
        int k = row_adapter[r];
        if (k == -1) continue;
        if (k < 0 || k >= p->n_slots || !p->slots[k].name)
            return peft_fail(err, PEFT_EINVAL, "adapter pool: row %d names adapter %d, which is not loaded", r, k);
        p->keys[n++] = (int64_t)k * p->max_rows + r;
    }
    qsort(p->keys, (size_t)n, sizeof *p->keys, cmp_key); /* by slot, then row */
    p->n_groups = 0;
    for (int i = 0; i < n; i++) {
        int k = (int)(p->keys[i] / p->max_rows);
        p->order[i] = (int)(p->keys[i] % p->max_rows);
        if (p->n_groups == 0 || p->group_slot[p->n_groups - 1] != k) {
            p->group_slot[p->n_groups] = k;
            p->group_start[p->n_groups] = i;
            p->group_len[p->n_groups++] = 0;
        }
        p->group_len[p->n_groups - 1]++;
    }
    return PEFT_OK;
}

void peft_adapter_pool_free(peft_adapter_pool *p) {
    if (!p) return;
    for (int k = 0; k < p->n_slots; k++)
        if (p->slots[k].name) peft_adapter_pool_unload(p, p->slots[k].name, NULL);
    if (p->m)
        for (int i = 0; i < p->n_sites; i++) p->m->sites[i]->adapter = NULL;
    free(p->slots);
    free(p->sites);
    free(p->order);
    free(p->keys);
    free(p->xg);
    free(p->yg);
    free(p);
}
