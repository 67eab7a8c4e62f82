/* registry.c: the PEFT methods peft.c has. A new method is one file in src/methods/ that
 * defines a `const peft_method peft_method_<name>` (declared in its header), plus one line
 * in the list below. */
#include <string.h>

#include "methods/adapter_set.h"
#include "methods/lora.h"
#include "methods/pissa.h"
#include "methods/svft.h"
#include "methods/sara.h"
#include "methods/dora.h"
#include "methods/ia3.h"
#include "methods/vera.h"
#include "methods/prompt_tuning.h"
#include "methods/ln_tuning.h"
#include "methods/prefix_tuning.h"
#include "methods/hut.h"
#include "methods/hydra.h"
#include "methods/bottleneck.h"
#include "methods/nola.h"
#include "methods/mos.h"
#include "methods/bitfit.h"
#include "methods/lisa.h"

const peft_method *const peft_methods[] = {
    /* before lora: they claim the LoraConfigs with init_lora_weights "pissa" / "corda" */
    &peft_method_pissa,
    &peft_method_corda_kpm,
    &peft_method_corda_ipm,
    &peft_method_lora,
    &peft_method_dora,
    &peft_method_ia3,
    &peft_method_vera,
    &peft_method_prompt_tuning,
    &peft_method_ln_tuning,
    &peft_method_prefix_tuning,
    &peft_method_hut,
    &peft_method_hydra,
    &peft_method_adapter_seq,
    &peft_method_adapter_par,
    &peft_method_nola,
    &peft_method_mos,
    &peft_method_svft,
    &peft_method_sara,
    &peft_method_bitfit,
    &peft_method_lisa,
    NULL,
};

const peft_method *peft_method_find(const char *name) {
    for (int i = 0; peft_methods[i]; i++)
        if (!strcmp(peft_methods[i]->name, name)) return peft_methods[i];
    return NULL;
}
