"""Loaded in the probed processes (bench/memprobe puts this directory on PYTHONPATH): a thread writes
glibc's `mallinfo2` every 0.25 s to `$NEXUS_MEMPROBE/<pid>.mallinfo`, `malloc_info`'s XML whenever
glibc holds more than ever before to `<pid>.malloc_info.xml`, and the loaded modules after 6 s to
`<pid>.modules`. `MEMPROBE_TRIM=1` also calls `malloc_trim(0)` at each sample (an experiment)."""

import os


def _start() -> None:
    import ctypes
    import sys
    import threading
    import time

    directory = os.environ.get("NEXUS_MEMPROBE")
    if not directory:
        return

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        ] + [("keepcost", ctypes.c_size_t)]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    trim = os.environ.get("MEMPROBE_TRIM") == "1"
    pid = os.getpid()

    def modules() -> None:
        time.sleep(6)
        with open(os.path.join(directory, f"{pid}.modules"), "w") as fh:
            fh.write("\n".join(sorted(sys.modules)))

    def run() -> None:
        most = 0
        with open(os.path.join(directory, f"{pid}.mallinfo"), "a") as fh:
            while True:
                m = libc.mallinfo2()
                held = m.arena + m.hblkhd
                if held > most:
                    most = held
                    fp = libc.fopen(os.path.join(directory, f"{pid}.malloc_info.xml").encode(), b"w")
                    if fp:
                        libc.malloc_info(0, fp)
                        libc.fclose(fp)
                fh.write(
                    f"{time.time():.2f} arena={m.arena >> 20} inuse={m.uordblks >> 20} free={m.fordblks >> 20} "
                    f"mmapped={m.hblkhd >> 20} hblks={m.hblks}\n"
                )
                fh.flush()
                if trim:
                    libc.malloc_trim(0)
                time.sleep(0.25)

    threading.Thread(target=modules, daemon=True, name="memprobe-modules").start()
    threading.Thread(target=run, daemon=True, name="memprobe").start()


os.register_at_fork(after_in_child=_start)
_start()
