/* dist.h: the few collective operations data-parallel training needs, over MPI when peft.c
 * is built with it (CMake finds OpenMPI's libmpi), else a job of one process.
 *
 * A job is the set of processes `mpirun -np N` started; each has a rank in [0, N). Every
 * call below is collective: all ranks make it, in the same order, with the same sizes. A
 * rank that failed still makes the calls (with its status) so the others learn of the
 * failure instead of waiting for it forever (see peft_dist_agree). Byte buffers are sent as
 * they are: the ranks must run on machines of one architecture (same float layout). */
#ifndef PEFT_TRAIN_DIST_H
#define PEFT_TRAIN_DIST_H

#include <stddef.h>

#include "error.h"

typedef struct peft_dist {
    int rank; /* this process, 0 .. size - 1; rank 0 writes every file */
    int size; /* processes in the job (1: not under mpirun) */
} peft_dist;

/* Joins the job mpirun started (MPI_Init), or makes a job of one outside mpirun. A build
 * without MPI launched by mpirun with N > 1 (OMPI_COMM_WORLD_SIZE / PMI_SIZE) fails: it
 * would train N independent copies of one adapter into one directory. */
int peft_dist_init(peft_dist *d, peft_err *err);
/* Leaves the job (MPI_Finalize); a job of one has nothing to do. */
void peft_dist_finalize(peft_dist *d);

/* recv [size * bytes] = every rank's send [bytes], in rank order. */
int peft_dist_allgather(const peft_dist *d, const void *send, size_t bytes, void *recv, peft_err *err);
/* buf [bytes] of rank `root` is copied into every rank's buf. */
int peft_dist_bcast(const peft_dist *d, void *buf, size_t bytes, int root, peft_err *err);
/* Agrees on failure: returns rc where this rank failed (err keeps its message), PEFT_OK when
 * every rank succeeded, else an error naming the lowest failed rank (its own message is on
 * its stderr). A job of one returns rc. */
int peft_dist_agree(const peft_dist *d, int rc, peft_err *err);

#endif
