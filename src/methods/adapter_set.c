/* adapter_set.c: attaching, saving and loading a model's adapters. */
#include "adapter_set.h"

int peft_adapter_set_load(const char *dir, peft_llama *model, peft_adapter_set **out, peft_err *err) {
    *out = NULL;
    return peft_fail(err, PEFT_EUNSUPPORTED, "%s: loading adapters is not implemented yet", dir);
}

void peft_adapter_set_free(peft_adapter_set *set) { (void)set; }
