/* dist.c: collectives over MPI (PEFT_HAVE_MPI) or for a job of one (dist.h). MPI counts are
 * ints, so a single message is at most INT_MAX bytes; broadcasts go in pieces of that size,
 * gathers (one packet of gradients per rank) refuse more, which no adapter comes near. */
#include "dist.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef PEFT_HAVE_MPI
#include <mpi.h>

static int mpi_fail(peft_err *err, int mrc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(mrc, msg, &len);
    return peft_fail(err, PEFT_EIO, "MPI %s failed: %.*s", what, len, msg);
}
#endif

/* The job size a launcher announces in the environment (OpenMPI, then MPICH/PMI), 1 if none. */
static int launcher_size(void) {
    const char *names[2] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (int i = 0; i < 2; i++) {
        const char *s = getenv(names[i]);
        if (s && atoi(s) > 1) return atoi(s);
    }
    return 1;
}

int peft_dist_init(peft_dist *d, peft_err *err) {
    d->rank = 0;
    d->size = 1;
#ifdef PEFT_HAVE_MPI
    if (launcher_size() == 1) return PEFT_OK; /* not under mpirun: no MPI runtime to start */
    int mrc = MPI_Init(NULL, NULL);
    if (mrc != MPI_SUCCESS) return mpi_fail(err, mrc, "MPI_Init");
    /* errors come back as codes with a message instead of aborting the job */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    return PEFT_OK;
#else
    int n = launcher_size();
    if (n > 1)
        return peft_fail(err, PEFT_EUNSUPPORTED, "launched as one of %d MPI processes, but this peft was built without MPI: each "
                         "would train its own copy; rebuild with libopenmpi-dev installed (CMake finds it) or run one process", n);
    return PEFT_OK;
#endif
}

void peft_dist_finalize(peft_dist *d) {
#ifdef PEFT_HAVE_MPI
    int up = 0;
    MPI_Initialized(&up);
    if (up) MPI_Finalize();
#endif
    d->rank = 0;
    d->size = 1;
}

int peft_dist_allgather(const peft_dist *d, const void *send, size_t bytes, void *recv, peft_err *err) {
    if (d->size == 1) {
        memmove(recv, send, bytes);
        return PEFT_OK;
    }
#ifdef PEFT_HAVE_MPI
    if (bytes > INT_MAX)
        return peft_fail(err, PEFT_EUNSUPPORTED, "MPI gather of %zu bytes per rank: more than one message holds (%d)", bytes,
                         INT_MAX);
    int mrc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    return mrc == MPI_SUCCESS ? PEFT_OK : mpi_fail(err, mrc, "MPI_Allgather");
#else
    return peft_fail(err, PEFT_EINTERNAL, "a job of %d ranks without MPI", d->size);
#endif
}

int peft_dist_bcast(const peft_dist *d, void *buf, size_t bytes, int root, peft_err *err) {
    if (d->size == 1) return PEFT_OK;
#ifdef PEFT_HAVE_MPI
    for (size_t off = 0; off < bytes; off += INT_MAX) {
        size_t n = bytes - off < INT_MAX ? bytes - off : INT_MAX;
        int mrc = MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
        if (mrc != MPI_SUCCESS) return mpi_fail(err, mrc, "MPI_Bcast");
    }
    return PEFT_OK;
#else
    return peft_fail(err, PEFT_EINTERNAL, "a job of %d ranks without MPI", d->size);
#endif
}

int peft_dist_agree(const peft_dist *d, int rc, peft_err *err) {
    if (d->size == 1) return rc;
#ifdef PEFT_HAVE_MPI
    /* the lowest failed rank, or size when none failed */
    int mine = rc ? d->rank : d->size, first = d->size;
    int mrc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (mrc != MPI_SUCCESS) return rc ? rc : mpi_fail(err, mrc, "MPI_Allreduce");
    if (rc || first == d->size) return rc;
    return peft_fail(err, PEFT_EIO, "rank %d of the MPI job failed (its message is above); rank %d stops too", first, d->rank);
#else
    return peft_fail(err, PEFT_EINTERNAL, "a job of %d ranks without MPI", d->size);
#endif
}
