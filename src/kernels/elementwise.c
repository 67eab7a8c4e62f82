/* elementwise.c: flat vector helpers (residual adds, scaling), OpenMP-threaded for big n. */
#include "kernels.h"

#define EW_PAR_MIN 32768 /* below this, a parallel region costs more than it saves */

void add_inplace(float *y, const float *x, size_t n) {
    // y (n) += x (n)
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void scale_inplace(float *y, float a, size_t n) {
    // y (n) *= a
#pragma omp parallel for simd schedule(static) if (n > EW_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] *= a;
}
