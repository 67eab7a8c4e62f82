/* kill_on_fsync.c: an LD_PRELOAD fault injector for the tests in this folder: the Nth call of
 * fsync() (N from $KILL_AT_FSYNC) sends SIGKILL to the process, after a temporary file was
 * written and before it is renamed over its target. Build: cc -shared -fPIC -o x.so this.c */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

int fsync(int fd) {
    static int calls;
    const char *at = getenv("KILL_AT_FSYNC");
    if (at && ++calls == atoi(at)) kill(getpid(), SIGKILL);
    return fdatasync(fd);
}
