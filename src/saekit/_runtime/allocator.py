"""Keep freed memory in the process on glibc Linux, so that a training step's large
temporaries do not cost page faults every step.

A step allocates and frees several [batch, d_sae] tensors (75 MB each in bf16 at batch
4096, d_sae 9216). glibc serves blocks that large with mmap and returns them with
munmap, so every step the kernel zero-fills their pages again on first touch: on a
2-core machine that doubles the cost of an elementwise pass (a ReLU over such a tensor
takes 35 ms instead of 8). Telling malloc to take large blocks from its heap and not to
trim it makes the second step reuse the first step's pages. Peak memory is unchanged
(it is set by the largest step); memory freed after training stays reserved by the
process until it exits.

It must happen while no other thread can be inside malloc: mallopt changes malloc's
parameters without stopping other threads, and a torch.distributed process group's
communication threads allocate at any moment (changing it under them crashed ranks with
SIGABRT). So it is skipped once a process group exists; the command line applies it
first thing, before any group is made.

Set SAEKIT_KEEP_FREED_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above, once per process; True when it was applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SAEKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # its threads may be in malloc now
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(option, value) == 1
        for option, value in (
            (_M_MMAP_MAX, 0),  # large blocks from the heap, not from mmap
            (_M_TRIM_THRESHOLD, 2**31 - 1),  # never give the heap's top back to the kernel
            (_M_TOP_PAD, 0),  # grow the heap by what is asked for, no more
        )
    )
    _done = ok
    return ok
