/* adapter_pool.h: many adapters on one base, chosen per row (Punica / S-LoRA style
 * mixed-adapter batches).
 *
 * A pool holds several PEFT adapters loaded from their directories under names, in stable
 * slots (an index stays valid while other adapters load and unload). Before a forward the
 * caller says which adapter each token row uses (set_rows: a pool index, or -1 for the base
 * model alone). At every site some pooled adapter targets, the pool attaches one "pool"
 * adapter of its own: the base matmul still runs once over all rows, then for each group of
 * rows sharing an adapter the pool gathers their inputs, adds that adapter's term and
 * scatters the result back. A site a row's adapter does not target adds nothing to the row.
 *
 * Mixable methods: LoRA (with rsLoRA, rank_pattern / alpha_pattern), DoRA, IA3, VeRA, i.e.
 * methods whose term for a row depends only on that row. Others are refused by load.
 *
 * Rows: peft_model_forward and peft_model_decode number a forward's N = B*T rows in order (sequence
 * b's tokens at rows b*T .. b*T+T-1); peft_model_decode_batch has one row per sequence. A prefill
 * of one sequence with peft_model_decode uses set_rows with its n rows all set to one index.
 *
 * Threads: one forward at a time; load/unload/set_rows between forwards only. The pool
 * keeps its sites' adapter pointers: the model must carry no other adapter set meanwhile. */
#ifndef PEFT_METHODS_ADAPTER_POOL_H
#define PEFT_METHODS_ADAPTER_POOL_H

#include "error.h"
#include "models/model.h"

typedef struct peft_adapter_pool peft_adapter_pool;

/* An empty pool on model m for forwards of up to max_rows rows. Free with
 * peft_adapter_pool_free (before m). */
int peft_adapter_pool_create(peft_model *m, int max_rows, peft_adapter_pool **out, peft_err *err);
/* Loads the PEFT adapter DIR under `name` (hot: between forwards); refuses a name in use, a
 * method it cannot mix. The adapter takes the lowest free slot. */
int peft_adapter_pool_load(peft_adapter_pool *p, const char *name, const char *dir, peft_err *err);
/* Frees the adapter `name`; its slot becomes free; rows that used it must be set again. */
int peft_adapter_pool_unload(peft_adapter_pool *p, const char *name, peft_err *err);
int peft_adapter_pool_find(const peft_adapter_pool *p, const char *name);   /* index, or -1 */
/* The number of slots (loaded or empty): indices run 0 .. count-1. */
int peft_adapter_pool_count(const peft_adapter_pool *p);
const char *peft_adapter_pool_name(const peft_adapter_pool *p, int i);      /* NULL for an empty slot */
/* The adapter of each row of the next forwards: row_adapter[N] = pool index or -1 (the
 * base). N <= max_rows; every index must name a loaded adapter. Kept until the next call. */
int peft_adapter_pool_set_rows(peft_adapter_pool *p, const int *row_adapter, int N, peft_err *err);
/* Detaches the pool from the model's sites and frees every adapter. NULL is a no-op. */
void peft_adapter_pool_free(peft_adapter_pool *p);

#endif
