/* mos.h: MoS (Wang et al., 2024, "MoS: Unleashing Parameter Efficiency of Low-Rank Adaptation
 * with Mixture of Shards"): LoRA whose A and B are assembled from shards of global pools
 * shared by every layer, y = x W^T + b + s * (dropout(x) A^T) B^T, s = alpha / r.
 *
 * Vector sharding: each row of A [r, in] and each column of B [out, r] is the concatenation
 * of L shards (L = MOS_SHARDS_PER_VECTOR when the width divides, else 1).
 * Global pools, one pair per module kind (q_proj, ..., shared by all its layers, trained and
 * saved): "base_model.mos_A_<kind>" [P_A, in / L_A], "base_model.mos_B_<kind>" [P_B, out / L_B],
 * P = MOS_POOL_FACTOR * (r - r_priv) * L shards.
 * Shard privatization: the first r_priv = max(1, r / 4) ranks of each site are private
 * (mos_private_A.weight [r_priv, in], mos_private_B.weight [out, r_priv], per site).
 * Subset selection / pair dissociation: the other (r - r_priv) * L shard slots of A pick
 * distinct pool shards by a seeded routing (a partial Fisher-Yates shuffle of the pool from
 * peft_rng_seed(seed, site_hash ^ MOS_STREAM_A)); B's slots use an independent stream. The
 * routing is regenerated from the seed saved as "routing_seed" in adapter_config.json.
 * Init: pool A and private A as LoRA's A (U(+-1/sqrt(in))), pool B and private B zero.
 * Mergeable: W += s B A with the assembled matrices. */
#ifndef PEFT_METHODS_MOS_H
#define PEFT_METHODS_MOS_H

#include "methods/adapter.h"

#define MOS_SHARDS_PER_VECTOR 2
#define MOS_POOL_FACTOR 4

extern const peft_method peft_method_mos;

#endif
