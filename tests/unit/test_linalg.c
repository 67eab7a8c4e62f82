/* test_linalg.c: the LAPACK wrappers of kernels/linalg.h.
 *   - svd_f32 on tall, wide, square and rank-deficient matrices: A == U diag(S) Vt (1e-5
 *     relative), U^T U == I and Vt Vt^T == I, S descending and non-negative;
 *   - inv_f32: A Ainv == I for a well-conditioned matrix; a singular matrix is reported.
 * With PEFT_LINALG_SVD=DIR it is the driver of tests/parity/test_methods_svd_parity.py: reads
 * DIR/in.safetensors ("A" F32 [m, n]) and writes DIR/out.safetensors ("U", "S", "Vt"), which
 * the Python side compares with numpy.linalg.svd. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/safetensors.h"
#include "kernels/linalg.h"
#include "rng.h"

static void check_svd(int m, int n, int rank_def, peft_rng *r) {
    int k = m < n ? m : n;
    float *A = malloc(sizeof(float) * m * n), *U = malloc(sizeof(float) * m * k), *S = malloc(sizeof(float) * k),
          *Vt = malloc(sizeof(float) * k * n);
    for (int i = 0; i < m * n; i++) A[i] = 2.0f * peft_rng_uniform(r) - 1.0f;
    if (rank_def) /* last row = first row: rank < min(m, n) */
        memcpy(A + (size_t)(m - 1) * n, A, sizeof(float) * n);
    CHECK(svd_f32(A, m, n, U, S, Vt) == 0);
    double amax = 0, rec = 0, orth_u = 0, orth_v = 0;
    int order = 1;
    for (int i = 0; i < m * n; i++) amax = fmax(amax, fabs(A[i]));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = 0;
            for (int t = 0; t < k; t++) v += (double)U[(size_t)i * k + t] * S[t] * Vt[(size_t)t * n + j];
            rec = fmax(rec, fabs(v - A[(size_t)i * n + j]));
        }
    for (int a = 0; a < k; a++) {
        order &= S[a] >= 0 && (a == 0 || S[a] <= S[a - 1]);
        for (int b = 0; b < k; b++) {
            double du = 0, dv = 0;
            for (int i = 0; i < m; i++) du += (double)U[(size_t)i * k + a] * U[(size_t)i * k + b];
            for (int j = 0; j < n; j++) dv += (double)Vt[(size_t)a * n + j] * Vt[(size_t)b * n + j];
            /* a rank-deficient matrix's null singular vectors are still orthonormal in LAPACK */
            orth_u = fmax(orth_u, fabs(du - (a == b)));
            orth_v = fmax(orth_v, fabs(dv - (a == b)));
        }
    }
    CHECK_MSG(rec / amax < 1e-5, "svd %dx%d: reconstruction error %.2e", m, n, rec / amax);
    CHECK_MSG(orth_u < 1e-5 && orth_v < 1e-5, "svd %dx%d: U or Vt not orthonormal (%.1e, %.1e)", m, n, orth_u, orth_v);
    CHECK_MSG(order, "svd %dx%d: S not descending / non-negative", m, n);
    if (rank_def) CHECK_MSG(S[k - 1] < 1e-5 * S[0], "svd %dx%d rank-deficient: smallest S %.2e", m, n, S[k - 1]);
    printf("  svd %4d x %-4d%s: reconstruction %.1e, orthonormality %.1e / %.1e\n", m, n, rank_def ? " (rank-deficient)" : "",
           rec / amax, orth_u, orth_v);
    free(A), free(U), free(S), free(Vt);
}

static void check_inv(int n, peft_rng *r) {
    float *A = malloc(sizeof(float) * n * n), *Ai = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++) A[i] = 0.3f * (2.0f * peft_rng_uniform(r) - 1.0f) + (i % (n + 1) == 0 ? 2.0f : 0.0f);
    CHECK(inv_f32(A, n, Ai) == 0);
    double e = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double v = 0;
            for (int t = 0; t < n; t++) v += (double)A[(size_t)i * n + t] * Ai[(size_t)t * n + j];
            e = fmax(e, fabs(v - (i == j)));
        }
    CHECK_MSG(e < 1e-5, "inv %d: |A Ainv - I| = %.2e", n, e);
    printf("  inv %d: |A Ainv - I| %.1e\n", n, e);
    memset(A, 0, sizeof(float) * n * n); /* singular */
    CHECK(inv_f32(A, n, Ai) > 0);
    free(A), free(Ai);
}

static int driver(const char *dir) {
    char path[4200];
    peft_err err = {0};
    peft_st_file *f;
    snprintf(path, sizeof path, "%s/in.safetensors", dir);
    if (peft_st_open(path, &f, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const peft_st_tensor *t = peft_st_find(f, "A");
    if (!t || t->dtype != PEFT_F32 || t->ndim != 2) {
        fprintf(stderr, "%s: needs F32 \"A\" [m, n]\n", path);
        return 1;
    }
    int m = (int)t->shape[0], n = (int)t->shape[1], k = m < n ? m : n;
    float *A = malloc(sizeof(float) * m * n), *U = malloc(sizeof(float) * m * k), *S = malloc(sizeof(float) * k),
          *Vt = malloc(sizeof(float) * k * n);
    memcpy(A, t->data, sizeof(float) * m * n); /* the mapping may be unaligned */
    int rc = svd_f32(A, m, n, U, S, Vt);
    peft_st_entry e[3] = {{.name = "U", .dtype = PEFT_F32, .ndim = 2, .shape = {m, k}, .data = U},
                          {.name = "S", .dtype = PEFT_F32, .ndim = 1, .shape = {k}, .data = S},
                          {.name = "Vt", .dtype = PEFT_F32, .ndim = 2, .shape = {k, n}, .data = Vt}};
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    if (rc == 0) rc = peft_st_write(path, e, 3, NULL, 0, &err);
    if (rc) fprintf(stderr, "svd failed (%d) %s\n", rc, err.msg);
    free(A), free(U), free(S), free(Vt);
    peft_st_close(f);
    return rc != 0;
}

int main(void) {
    const char *dir = getenv("PEFT_LINALG_SVD");
    if (dir) return driver(dir);
    peft_rng r;
    peft_rng_seed(&r, 1, 2);
    check_svd(7, 7, 0, &r);
    check_svd(40, 13, 0, &r);
    check_svd(13, 40, 0, &r);
    check_svd(1, 9, 0, &r);
    check_svd(16, 24, 1, &r);
    check_svd(200, 120, 0, &r);
    check_inv(1, &r);
    check_inv(17, &r);
    check_inv(96, &r);
    return check_report("test_linalg");
}
