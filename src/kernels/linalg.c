/* linalg.c: LAPACK wrappers (linalg.h). LAPACK is column-major; a row-major [m,n] buffer is
 * the column-major [n,m] transpose, so the SVD runs on A^T = U' S V'^T and the factors of
 * A = V' S U'^T come out already in row-major order: U = V'^T's buffer, Vt = U'^T's. */
#include "linalg.h"

#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran ABI, hidden string lengths omitted: single-character arguments). */
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u, const int *ldu,
             float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info);
void sgesv_(const int *n, const int *nrhs, float *a, const int *lda, int *ipiv, float *b, const int *ldb, int *info);

int svd_f32(const float *A, int m, int n, float *U, float *S, float *Vt) {
    int k = m < n ? m : n, M = n, N = m, lwork = -1, info = 0;
    float *a = malloc((size_t)m * n * sizeof(float)), wq = 0;
    int *iwork = malloc((size_t)8 * k * sizeof(int));
    if (!a || !iwork) {
        free(a), free(iwork);
        return -1;
    }
    memcpy(a, A, (size_t)m * n * sizeof(float));
    /* column-major A^T [M = n, N = m]: its U' [n, k] (ldu n) is our Vt, its VT' [k, m] our U */
    sgesdd_("S", &M, &N, a, &M, S, Vt, &M, U, &k, &wq, &lwork, iwork, &info);
    if (info == 0) {
        lwork = (int)wq + 1;
        float *work = malloc((size_t)lwork * sizeof(float));
        if (!work) info = -1;
        else sgesdd_("S", &M, &N, a, &M, S, Vt, &M, U, &k, work, &lwork, iwork, &info);
        free(work);
    }
    free(a), free(iwork);
    return info;
}

int inv_f32(const float *A, int n, float *Ainv) {
    float *a = malloc((size_t)n * n * sizeof(float));
    int *ipiv = malloc((size_t)n * sizeof(int)), info = 0;
    if (!a || !ipiv) {
        free(a), free(ipiv);
        return -1;
    }
    /* (A^T)^-1 = (A^-1)^T: solving the column-major view (A^T) gives, read row-major, A^-1 */
    memcpy(a, A, (size_t)n * n * sizeof(float));
    memset(Ainv, 0, (size_t)n * n * sizeof(float));
    for (int i = 0; i < n; i++) Ainv[(size_t)i * n + i] = 1.0f;
    sgesv_(&n, &n, a, &n, ipiv, Ainv, &n, &info);
    free(a), free(ipiv);
    return info;
}
