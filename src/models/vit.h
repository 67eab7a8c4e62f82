/* vit.h: ViT for image classification behind models/model.h (ViTForImageClassification,
 * model_type "vit"; a ViTModel checkpoint without a classifier gets a freshly initialised head). */
#ifndef PEFT_MODELS_VIT_H
#define PEFT_MODELS_VIT_H

#include "models/model.h"

extern const peft_arch peft_arch_vit; /* model_type "vit" */

/* After a forward with acts a: the CLS token after vit.layernorm [B, C] (what the classifier
 * reads). Valid until the next forward. */
const float *vit_cls_features(const peft_acts *a);

#endif
