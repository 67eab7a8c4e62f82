/* linalg.h: dense factorizations for the SVD-based methods (PiSSA, CorDA, singular-value
 * tuning), over LAPACK from OpenBLAS (libopenblas exports the Fortran symbols). Row-major
 * float matrices, like the rest of peft.c. Not hot-path code: each call allocates its own
 * workspace. Threads: safe to call from one thread at a time per output buffer (OpenBLAS
 * threads internally). */
#ifndef PEFT_KERNELS_LINALG_H
#define PEFT_KERNELS_LINALG_H

/* Thin SVD A[m,n] = U[m,k] diag(S[k]) Vt[k,n], k = min(m, n), S descending (LAPACK sgesdd,
 * divide and conquer). A is not modified. Returns 0, -1 when out of memory, or LAPACK's
 * positive info when it did not converge. Singular vectors are unique only up to sign. */
int svd_f32(const float *A, int m, int n, float *U, float *S, float *Vt);

/* Ainv[n,n] = A[n,n]^-1 by LU with partial pivoting (LAPACK sgesv against the identity).
 * Returns 0, -1 when out of memory, or info > 0 when A is exactly singular. */
int inv_f32(const float *A, int n, float *Ainv);

#endif
