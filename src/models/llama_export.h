/* llama_export.h: a loaded model written back as a Hugging Face checkpoint (what `peft merge`
 * and LISA's training write). */
#ifndef PEFT_MODELS_LLAMA_EXPORT_H
#define PEFT_MODELS_LLAMA_EXPORT_H

#include "error.h"
#include "models/llama.h"

/* Writes DIR/model.safetensors with every tensor of m's checkpoint, in the file's order and
 * dtypes, holding the model's current values (after an in-place merge, or LISA's training):
 * a tensor the model widened to f32 is narrowed back when its values changed, and keeps the
 * file's bytes when they did not. Copies config.json, generation_config.json and the
 * tokenizer files from m's directory. Creates DIR; each file is written atomically. DIR must
 * not be m's own directory (the base checkpoint stays intact). */
int llama_save_hf(peft_llama *m, const char *dir, peft_err *err);
/* The model's current f32 values of checkpoint tensor `name` (HF name, HF shape), or NULL for
 * one the model does not hold (a tied lm_head). */
const float *llama_tensor_values(peft_llama *m, const char *name);

#endif
