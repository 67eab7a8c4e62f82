/* tiny_random_llama.h: the oracle of ../shared/models/tiny-random-llama recorded in its
 * SOURCE.txt (transformers, float64): the 8 greedy ids after the prompt [1, 2, 3]. Shared by
 * test_llama_tiny (llama.h) and test_model_iface (model.h). */
#ifndef PEFT_TESTS_TINY_RANDOM_LLAMA_H
#define PEFT_TESTS_TINY_RANDOM_LLAMA_H

#include <stdint.h>

static const int32_t tiny_random_llama_greedy[8] = {18568, 1727, 8705, 3598, 27426, 4496, 998, 16911};

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

#endif
