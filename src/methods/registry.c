/* registry.c: the PEFT methods peft.c has. A new method is one file in src/methods/ that
 * defines a `const peft_method peft_method_<name>` (declared in its header), plus one line
 * in the list below. */
#include <string.h>

#include "methods/adapter_set.h"
#include "methods/lora.h"
#include "methods/dora.h"
#include "methods/ia3.h"
#include "methods/vera.h"
#include "methods/prompt_tuning.h"

const peft_method *const peft_methods[] = {
    &peft_method_lora,
    &peft_method_dora,
    &peft_method_ia3,
    &peft_method_vera,
    &peft_method_prompt_tuning,
    NULL,
};

const peft_method *peft_method_find(const char *name) {
    for (int i = 0; peft_methods[i]; i++)
        if (!strcmp(peft_methods[i]->name, name)) return peft_methods[i];
    return NULL;
}
