/* fileio.c: POSIX file helpers with errors that name the file. */
#include "fileio.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int peft_read_file(const char *path, char **out, size_t *len, peft_err *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return peft_fail(err, PEFT_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return peft_fail(err, PEFT_EIO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu bytes", path, n + 1);
    }
    size_t got = fread(buf, 1, n, fp);
    int failed = ferror(fp);
    fclose(fp);
    if (failed || got != n) {
        free(buf);
        return peft_fail(err, PEFT_EIO, "%s: short read (%zu of %zu bytes)", path, got, n);
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return PEFT_OK;
}

int peft_map_file(const char *path, peft_mapping *m, peft_err *err) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return peft_fail(err, PEFT_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return peft_fail(err, PEFT_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return peft_fail(err, PEFT_EFORMAT, "%s: file is empty", path);
    }
    /* Writable copy-on-write pages: an in-place adapter merge changes memory, never the file. */
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return peft_fail(err, PEFT_EIO, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return PEFT_OK;
}

void peft_unmap_file(peft_mapping *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

int peft_mapping_release(const peft_mapping *m, const void *p, size_t n, int unwritten) {
    const unsigned char *b = p;
    if (!m->data || b < m->data || b + n > m->data + m->size) return 0;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)b + page - 1) & ~(page - 1), hi = ((uintptr_t)b + n) & ~(page - 1);
    if (hi <= lo) return 1;
    /* advice only: a failure changes nothing */
    if (unwritten) madvise((void *)lo, hi - lo, MADV_DONTNEED);
#ifdef MADV_PAGEOUT
    else madvise((void *)lo, hi - lo, MADV_PAGEOUT);
#endif
    return 1;
}

void peft_pages_discard(void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int peft_atomic_open(peft_atomic_file *af, const char *path, peft_err *err) {
    af->fp = NULL;
    if (strlen(path) >= sizeof af->path) return peft_fail(err, PEFT_EINVAL, "%s: path too long", path);
    strcpy(af->path, path);
    snprintf(af->tmp_path, sizeof af->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp)
        return peft_fail(err, PEFT_EIO, "%s: cannot create temporary file: %s", af->tmp_path, strerror(errno));
    return PEFT_OK;
}

int peft_atomic_commit(peft_atomic_file *af, peft_err *err) {
    int rc = PEFT_OK;
    if (fflush(af->fp) != 0 || ferror(af->fp))
        rc = peft_fail(err, PEFT_EIO, "%s: write failed: %s", af->path, strerror(errno));
    else if (fsync(fileno(af->fp)) != 0)
        rc = peft_fail(err, PEFT_EIO, "%s: fsync failed: %s", af->path, strerror(errno));
    if (fclose(af->fp) != 0 && rc == PEFT_OK)
        rc = peft_fail(err, PEFT_EIO, "%s: close failed: %s", af->path, strerror(errno));
    af->fp = NULL;
    if (rc == PEFT_OK && rename(af->tmp_path, af->path) != 0)
        rc = peft_fail(err, PEFT_EIO, "%s: rename failed: %s", af->path, strerror(errno));
    if (rc != PEFT_OK) unlink(af->tmp_path);
    return rc;
}

void peft_atomic_abort(peft_atomic_file *af) {
    if (af->fp) fclose(af->fp);
    af->fp = NULL;
    unlink(af->tmp_path);
}

int peft_write_file_atomic(const char *path, const void *data, size_t len, peft_err *err) {
    peft_atomic_file af;
    int rc = peft_atomic_open(&af, path, err);
    if (rc) return rc;
    if (len && fwrite(data, 1, len, af.fp) != len) {
        rc = peft_fail(err, PEFT_EIO, "%s: write failed: %s", path, strerror(errno));
        peft_atomic_abort(&af);
        return rc;
    }
    return peft_atomic_commit(&af, err);
}

int peft_mkdir(const char *path, peft_err *err) {
    /* Parents first (mkdir -p). */
    char parent[4096];
    size_t len = strlen(path);
    if (len >= sizeof parent) return peft_fail(err, PEFT_EINVAL, "%s: path too long", path);
    memcpy(parent, path, len + 1);
    for (char *p = parent + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(parent, 0755) != 0 && errno != EEXIST)
                return peft_fail(err, PEFT_EIO, "%s: cannot create directory: %s", parent, strerror(errno));
            *p = '/';
        }
    if (mkdir(path, 0755) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return PEFT_OK;
        return peft_fail(err, PEFT_EIO, "%s: exists and is not a directory", path);
    }
    return peft_fail(err, PEFT_EIO, "%s: cannot create directory: %s", path, strerror(errno));
}

int peft_copy_file(const char *src, const char *dst, peft_err *err) {
    char *buf;
    size_t len;
    int rc = peft_read_file(src, &buf, &len, err);
    if (rc) return rc;
    rc = peft_write_file_atomic(dst, buf, len, err);
    free(buf);
    return rc;
}

int peft_same_path(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int peft_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
