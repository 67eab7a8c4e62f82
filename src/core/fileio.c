/* fileio.c: POSIX file helpers with errors that name the file. */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE) */
#include "fileio.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Opens path for reading (*fd, its *st) only if it is a regular file. O_NONBLOCK: opening a FIFO (or a
 * device) would otherwise block until a writer appears, before fstat could refuse it; it is
 * cleared again before any read. */
static int open_regular(const char *path, int *fd, struct stat *st, peft_err *err) {
    *fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (*fd < 0) return peft_fail(err, PEFT_EIO, "%s: cannot open: %s", path, strerror(errno));
    int rc = PEFT_OK, flags;
    if (fstat(*fd, st) != 0) rc = peft_fail(err, PEFT_EIO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st->st_mode))
        rc = peft_fail(err, PEFT_EIO, "%s: not a regular file (%s)", path,
                       S_ISFIFO(st->st_mode) ? "a FIFO" : S_ISDIR(st->st_mode) ? "a directory" : "a device or socket");
    else if ((flags = fcntl(*fd, F_GETFL)) < 0 || fcntl(*fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        rc = peft_fail(err, PEFT_EIO, "%s: fcntl failed: %s", path, strerror(errno));
    if (rc) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}

int peft_read_file(const char *path, char **out, size_t *len, peft_err *err) {
    *out = NULL;
    struct stat st;
    int fd, rc = open_regular(path, &fd, &st, err);
    if (rc) return rc;
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        close(fd);
        return peft_fail(err, PEFT_EIO, "%s: cannot open: %s", path, strerror(errno));
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
    *m = (peft_mapping){0};
    struct stat st;
    int fd, rc = open_regular(path, &fd, &st, err);
    if (rc) return rc;
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
    if (hi <= lo || m->anonymous) return 1;
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

/* ---- output directories: a lock, stale temporaries, an atomic switch ---------------- */

/* 1 if name is stem + ".<digits>" for a stem that ends with `tail` (more than tail when
 * exact is 0, exactly tail when 1). */
static int pid_suffixed(const char *name, const char *tail, int exact) {
    const char *dot = strrchr(name, '.');
    size_t stem = dot ? (size_t)(dot - name) : 0, nt = strlen(tail);
    if (!dot || !dot[1] || strspn(dot + 1, "0123456789") != strlen(dot + 1)) return 0;
    return (exact ? stem == nt : stem > nt) && !strncmp(dot - nt, tail, nt);
}

/* Removes the regular files of directory path, then the directory. */
static void remove_flat_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char f[8400];
        snprintf(f, sizeof f, "%s/%s", path, e->d_name);
        unlink(f);
    }
    closedir(d);
    rmdir(path);
}

/* parent directory and last component of dir ("a/b/" -> "a", "b"; "b" -> ".", "b") */
static int split_dir(const char *dir, char *parent, size_t np, char *base, size_t nb, peft_err *err) {
    char tmp[4096];
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    if (len >= sizeof tmp) return peft_fail(err, PEFT_EINVAL, "%s: path too long", dir);
    memcpy(tmp, dir, len);
    tmp[len] = '\0';
    char *slash = strrchr(tmp, '/');
    const char *b = slash ? slash + 1 : tmp;
    if (!*b || !strcmp(b, ".") || !strcmp(b, ".."))
        return peft_fail(err, PEFT_EINVAL, "%s: name the output directory itself (not . or ..): it is replaced as a whole", dir);
    snprintf(base, nb, "%s", b);
    if (!slash) snprintf(parent, np, ".");
    else if (slash == tmp) snprintf(parent, np, "/");
    else snprintf(parent, np, "%.*s", (int)(slash - tmp), tmp);
    return PEFT_OK;
}

int peft_dir_lock(const char *dir, int *fd, peft_err *err) {
    char path[8400], parent[4096], base[4096];
    *fd = -1;
    int rc = split_dir(dir, parent, sizeof parent, base, sizeof base, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/" PEFT_LOCK_NAME, dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) return peft_fail(err, PEFT_EIO, "%s: cannot create the lock file: %s", path, strerror(errno));
    if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t k = pread(f, pid, sizeof pid - 1, 0);
        pid[k > 0 ? k : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(f);
        if (e == EWOULDBLOCK)
            return peft_fail(err, PEFT_EIO, "%s is in use by another peft run (pid %s): one run at a time may write it", dir,
                             *pid ? pid : "unknown");
        return peft_fail(err, PEFT_EIO, "%s: cannot lock: %s", path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    /* the pid only serves the message above: a failed write changes nothing else */
    int noted = ftruncate(f, 0) == 0 && pwrite(f, pid, (size_t)n, 0) == n;
    (void)noted;
    /* Under the lock no other run writes here: what temporaries remain are a killed run's. */
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (pid_suffixed(e->d_name, ".tmp", 0)) { /* peft_atomic_open's "<path>.tmp.<pid>" */
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    if (d) closedir(d);
    char stage[4200];
    snprintf(stage, sizeof stage, "%s.peft-stage", base);
    d = opendir(parent);
    for (struct dirent *e; d && (e = readdir(d));)
        if (pid_suffixed(e->d_name, stage, 1)) {
            snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
            remove_flat_dir(path);
        }
    if (d) closedir(d);
    *fd = f;
    return PEFT_OK;
}

void peft_dir_unlock(int fd) {
    if (fd >= 0) close(fd); /* closing releases the flock */
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

int peft_dir_stage_begin(peft_dir_stage *st, const char *dir, peft_err *err) {
    char parent[4096], base[4096];
    int rc = split_dir(dir, parent, sizeof parent, base, sizeof base, err);
    if (rc == PEFT_OK && peft_same_path(dir, ".")) /* the switch would leave this process in the removed old directory */
        rc = peft_fail(err, PEFT_EINVAL, "%s: the output directory cannot be the current directory (it is replaced as a whole)", dir);
    if (rc == PEFT_OK) rc = peft_mkdir(dir, err);
    if (rc) return rc;
    snprintf(st->dir, sizeof st->dir, "%s", dir);
    snprintf(st->parent, sizeof st->parent, "%s", parent);
    snprintf(st->path, sizeof st->path, "%s/%s.peft-stage.%ld", parent, base, (long)getpid());
    remove_flat_dir(st->path); /* a leftover of this pid's earlier save */
    if (mkdir(st->path, 0755) != 0)
        return peft_fail(err, PEFT_EIO, "%s: cannot create the staging directory: %s", st->path, strerror(errno));
    /* carry the directory's other files over: hard links, so nothing is copied or changed */
    DIR *d = opendir(dir);
    if (!d) rc = peft_fail(err, PEFT_EIO, "%s: cannot list: %s", dir, strerror(errno));
    for (struct dirent *e; rc == PEFT_OK && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char from[4400], to[sizeof st->path + 300];
        snprintf(from, sizeof from, "%s/%s", dir, e->d_name);
        snprintf(to, sizeof to, "%s/%s", st->path, e->d_name);
        struct stat sb;
        if (lstat(from, &sb) != 0 || !S_ISREG(sb.st_mode))
            rc = peft_fail(err, PEFT_EINVAL, "%s: holds \"%s\", which is not a regular file: an output directory is replaced as a "
                           "whole, so it may only hold files (choose another directory)", dir, e->d_name);
        else if (link(from, to) != 0)
            rc = peft_fail(err, PEFT_EIO, "%s: cannot link into %s: %s", from, st->path, strerror(errno));
    }
    if (d) closedir(d);
    if (rc) peft_dir_stage_abort(st);
    return rc;
}

int peft_dir_stage_commit(peft_dir_stage *st, peft_err *err) {
    if (fsync_path(st->path) != 0) {
        int rc = peft_fail(err, PEFT_EIO, "%s: fsync failed: %s", st->path, strerror(errno));
        peft_dir_stage_abort(st);
        return rc;
    }
    /* One rename switches every file at once; the old directory is then at st->path. */
    if (renameat2(AT_FDCWD, st->path, AT_FDCWD, st->dir, RENAME_EXCHANGE) != 0) {
        int rc = peft_fail(err, PEFT_EIO, "%s: cannot switch in the new files (rename with RENAME_EXCHANGE: %s)", st->dir,
                           strerror(errno));
        peft_dir_stage_abort(st);
        return rc;
    }
    fsync_path(st->parent); /* durability of the switch; it has happened either way */
    remove_flat_dir(st->path);
    return PEFT_OK;
}

void peft_dir_stage_abort(peft_dir_stage *st) { remove_flat_dir(st->path); }
