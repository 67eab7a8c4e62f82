/* adapter_set.h: the adapters attached to a model, as one unit that is created from a
 * method + target list, trained, saved in Hugging Face PEFT's format and loaded back. */
#ifndef PEFT_METHODS_ADAPTER_SET_H
#define PEFT_METHODS_ADAPTER_SET_H

#include "error.h"
#include "methods/adapter.h"
#include "models/llama.h"

typedef struct peft_adapter_set peft_adapter_set;

/* Loads DIR/adapter_config.json + DIR/adapter_model.safetensors and attaches the adapters to
 * the model's sites. Keys and shapes are checked against the model. */
int peft_adapter_set_load(const char *dir, peft_llama *model, peft_adapter_set **out, peft_err *err);
/* Detaches the adapters from their sites and frees them. NULL is a no-op. */
void peft_adapter_set_free(peft_adapter_set *set);

#endif
