/* fileio.h: whole-file reads, read-only mappings and crash-safe writes.
 *
 * Writes that matter (adapters, checkpoints, merged models) go through
 * peft_atomic_open / peft_atomic_commit: the data goes to "<path>.tmp.<pid>",
 * is fsync'ed, then renamed over <path>, so an interrupted run leaves either the
 * old file or the new one, never a torn one. */
#ifndef PEFT_CORE_FILEIO_H
#define PEFT_CORE_FILEIO_H

#include <stdio.h>
#include "error.h"

/* Reads the whole file into a NUL-terminated heap buffer (*out, caller frees). */
int peft_read_file(const char *path, char **out, size_t *len, peft_err *err);

/* A read-only mapping of a whole file. */
typedef struct peft_mapping {
    const unsigned char *data;
    size_t size;
    int anonymous; /* 1: anonymous memory standing in for a file (a GGUF's dequantized tensors):
                      nothing could be read back, so peft_mapping_release keeps its pages */
} peft_mapping;
int peft_map_file(const char *path, peft_mapping *m, peft_err *err);
void peft_unmap_file(peft_mapping *m);
/* Gives the whole pages of [p, p + n) back to the kernel when they lie in mapping m; the
 * contents never change, only the resident memory does. For tensors that another copy now
 * serves (widened or packed 16-bit weights). unwritten = 1: the caller guarantees no page of
 * the range was ever written, so they are simply unmapped (MADV_DONTNEED; the page cache keeps
 * them for the next touch or run). 0: MADV_PAGEOUT, which evicts clean pages (read from the
 * file again if touched) and keeps changed copy-on-write ones. Returns 1 when the range is in
 * m, else 0. */
int peft_mapping_release(const peft_mapping *m, const void *p, size_t n, int unwritten);
/* Gives the whole pages of [p, p + n), heap memory the caller owns, back to the kernel
 * (MADV_DONTNEED): their contents are LOST (they read as zeros if touched again). */
void peft_pages_discard(void *p, size_t n);

/* Atomic write: open a temporary beside `path`; commit fsyncs, closes and renames;
 * abort closes and removes the temporary. Exactly one of commit/abort must follow open. */
typedef struct peft_atomic_file {
    FILE *fp;
    char path[4096];
    char tmp_path[4200];
} peft_atomic_file;
int peft_atomic_open(peft_atomic_file *af, const char *path, peft_err *err);
int peft_atomic_commit(peft_atomic_file *af, peft_err *err);
void peft_atomic_abort(peft_atomic_file *af);

/* Writes `len` bytes to `path` atomically. */
int peft_write_file_atomic(const char *path, const void *data, size_t len, peft_err *err);

/* mkdir -p: creates the directory and its missing parents; ok if it already exists. */
int peft_mkdir(const char *path, peft_err *err);

/* Copies a file atomically (used to carry tokenizer files into merged checkpoints). */
int peft_copy_file(const char *src, const char *dst, peft_err *err);

/* 1 if both paths exist and name the same file or directory. */
int peft_same_path(const char *a, const char *b);

/* 1 if the path exists and is a regular file. */
int peft_file_exists(const char *path);

/* Output directories (adapters, training runs) change as a whole, and one run at a time.
 *
 * peft_dir_lock takes an exclusive flock on DIR/.peft.lock (created if needed; DIR must
 * exist) and returns its descriptor in *fd; while another process holds it, it fails at once
 * naming that process. Holding it, it removes what killed runs left: temporaries
 * "DIR/<name>.tmp.<pid>" and staged directories "<DIR>.peft-stage.<pid>". peft_dir_unlock
 * releases it.
 *
 * Staging: peft_dir_stage_begin creates DIR if needed and a sibling "<DIR>.peft-stage.<pid>"
 * holding hard links of DIR's files (DIR may hold only regular files, and may not be the
 * current directory). The caller writes the new files into st->path (replacing links by
 * atomic writes, never writing through them); peft_dir_stage_commit exchanges the two
 * directories with one renameat2(RENAME_EXCHANGE), so a reader of DIR sees either all old or
 * all new files, then removes the old one. peft_dir_stage_abort removes the staged one. */
#define PEFT_LOCK_NAME ".peft.lock"
int peft_dir_lock(const char *dir, int *fd, peft_err *err);
void peft_dir_unlock(int fd);
typedef struct peft_dir_stage {
    char dir[4096], parent[4096];
    char path[8400]; /* the staging directory */
} peft_dir_stage;
int peft_dir_stage_begin(peft_dir_stage *st, const char *dir, peft_err *err);
int peft_dir_stage_commit(peft_dir_stage *st, peft_err *err);
void peft_dir_stage_abort(peft_dir_stage *st);

#endif
