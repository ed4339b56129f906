/* Logs every anonymous mmap of the process with the library that called it, one line per mapping
   ("address length library") in $MMAPLOG_DIR/<pid>.mmap: what bench/memprobe uses to tell the
   mappings of Granian's jemalloc, pyreqwest's mimalloc and CPython's arenas from glibc's own (whose
   internal mmap calls do not come through here). LD_PRELOAD only; never part of the product. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>

static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int logfd = -1;
static int logpid = 0;

static void logline(void *ret, size_t len, void *caller) {
    int pid = (int)syscall(SYS_getpid);
    if (logfd >= 0 && pid != logpid) { syscall(SYS_close, logfd); logfd = -1; }
    if (logfd < 0) {
        logpid = pid;
        const char *d = getenv("MMAPLOG_DIR");
        if (!d) return;
        char path[512];
        snprintf(path, sizeof path, "%s/%d.mmap", d, (int)syscall(SYS_getpid));
        logfd = (int)syscall(SYS_open, path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (logfd < 0) return;
    }
    Dl_info info;
    const char *lib = "?";
    if (dladdr(caller, &info) && info.dli_fname) lib = info.dli_fname;
    const char *base = strrchr(lib, '/');
    char buf[600];
    int n = snprintf(buf, sizeof buf, "%lx %zu %s\n", (unsigned long)ret, len, base ? base + 1 : lib);
    syscall(SYS_write, logfd, buf, n);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (!real_mmap) real_mmap = dlsym(RTLD_NEXT, "mmap");
    void *ret = real_mmap(addr, len, prot, flags, fd, off);
    if (ret != MAP_FAILED && (flags & MAP_ANONYMOUS)) logline(ret, len, __builtin_return_address(0));
    return ret;
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));
