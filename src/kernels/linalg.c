/* linalg.c: LAPACK wrappers (linalg.h). LAPACK is column-major; a row-major [m,n] buffer is
 * the column-major [n,m] transpose, so the SVD runs on A^T = U' S V'^T and the factors of
 * A = V' S U'^T come out already in row-major order: U = V'^T's buffer, Vt = U'^T's. Likewise
 * solving the column-major view A^T X = I gives X = (A^T)^-1, which read row-major is A^-1. */
#include "linalg.h"

#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran ABI; the single-character arguments need no hidden length in practice). */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u, const int *ldu,
             double *vt, const int *ldvt, double *work, const int *lwork, int *iwork, int *info);
void dgesv_(const int *n, const int *nrhs, double *a, const int *lda, int *ipiv, double *b, const int *ldb, int *info);

int svd_f64(const double *A, int m, int n, double *U, double *S, double *Vt) {
    int k = m < n ? m : n, M = n, N = m, lwork = -1, info = 0;
    double *a = malloc((size_t)m * n * sizeof(double)), wq = 0;
    int *iwork = malloc((size_t)8 * k * sizeof(int));
    if (!a || !iwork) {
        free(a), free(iwork);
        return -1;
    }
    memcpy(a, A, (size_t)m * n * sizeof(double));
    /* column-major A^T [M = n, N = m]: its U' [n, k] (ldu n) is our Vt, its VT' [k, m] our U */
    dgesdd_("S", &M, &N, a, &M, S, Vt, &M, U, &k, &wq, &lwork, iwork, &info);
    if (info == 0) {
        lwork = (int)wq + 1;
        double *work = malloc((size_t)lwork * sizeof(double));
        if (!work) info = -1;
        else dgesdd_("S", &M, &N, a, &M, S, Vt, &M, U, &k, work, &lwork, iwork, &info);
        free(work);
    }
    free(a), free(iwork);
    return info;
}

int inv_f64(const double *A, int n, double *Ainv) {
    double *a = malloc((size_t)n * n * sizeof(double));
    int *ipiv = malloc((size_t)n * sizeof(int)), info = 0;
    if (!a || !ipiv) {
        free(a), free(ipiv);
        return -1;
    }
    memcpy(a, A, (size_t)n * n * sizeof(double));
    memset(Ainv, 0, (size_t)n * n * sizeof(double));
    for (int i = 0; i < n; i++) Ainv[(size_t)i * n + i] = 1.0;
    dgesv_(&n, &n, a, &n, ipiv, Ainv, &n, &info);
    free(a), free(ipiv);
    return info;
}

static double *to_f64(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double));
    if (d)
        for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static void to_f32(float *dst, const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)x[i];
}

int svd_f32(const float *A, int m, int n, float *U, float *S, float *Vt) {
    size_t k = (size_t)(m < n ? m : n);
    double *a = to_f64(A, (size_t)m * n), *u = malloc((size_t)m * k * sizeof(double)), *s = malloc(k * sizeof(double)),
           *vt = malloc(k * n * sizeof(double));
    int info = a && u && s && vt ? svd_f64(a, m, n, u, s, vt) : -1;
    if (info == 0) {
        to_f32(U, u, (size_t)m * k);
        to_f32(S, s, k);
        to_f32(Vt, vt, k * n);
    }
    free(a), free(u), free(s), free(vt);
    return info;
}

int inv_f32(const float *A, int n, float *Ainv) {
    size_t nn = (size_t)n * n;
    double *a = to_f64(A, nn), *ai = malloc(nn * sizeof(double));
    int info = a && ai ? inv_f64(a, n, ai) : -1;
    if (info == 0) to_f32(Ainv, ai, nn);
    free(a), free(ai);
    return info;
}
