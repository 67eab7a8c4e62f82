/* linalg.h: dense factorizations for the SVD-based methods (PiSSA, CorDA, singular-value
 * tuning), over LAPACK from OpenBLAS (libopenblas exports the Fortran symbols). Row-major
 * matrices, like the rest of peft.c. The float entry points compute in double (the methods
 * derive frozen bases from them once, so accuracy beats speed here). Not hot-path code: each
 * call allocates its own workspace. Threads: one call at a time per output buffer (OpenBLAS
 * threads internally). */
#ifndef PEFT_KERNELS_LINALG_H
#define PEFT_KERNELS_LINALG_H

/* Thin SVD A[m,n] = U[m,k] diag(S[k]) Vt[k,n], k = min(m, n), S descending (LAPACK dgesdd,
 * divide and conquer). A is not modified. Returns 0, -1 when out of memory, or LAPACK's
 * positive info when it did not converge. Singular vectors are unique only up to sign. */
int svd_f32(const float *A, int m, int n, float *U, float *S, float *Vt);
int svd_f64(const double *A, int m, int n, double *U, double *S, double *Vt);

/* Ainv[n,n] = A[n,n]^-1 by LU with partial pivoting (LAPACK dgesv against the identity).
 * Returns 0, -1 when out of memory, or info > 0 when A is exactly singular. */
int inv_f32(const float *A, int n, float *Ainv);
int inv_f64(const double *A, int n, double *Ainv);

#endif
