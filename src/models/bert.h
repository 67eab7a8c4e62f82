/* bert.h: BERT and RoBERTa encoders for sequence classification behind models/model.h
 * (BertForSequenceClassification, RobertaForSequenceClassification; a BertModel /
 * sentence-transformers checkpoint gets a freshly initialised head). */
#ifndef PEFT_MODELS_BERT_H
#define PEFT_MODELS_BERT_H

#include "models/model.h"

extern const peft_arch peft_arch_bert; /* model_type "bert" and "roberta" */

/* After a forward with acts a: the last layer's hidden states [B*T, C] (BertModel's
 * last_hidden_state) and the pooled output [B, C] (BERT: the pooler's tanh(dense([CLS]));
 * RoBERTa: the head's tanh(classifier.dense(<s>))). Valid until the next forward. */
const float *bert_hidden_states(const peft_acts *a);
const float *bert_pooled(const peft_acts *a);

#endif
