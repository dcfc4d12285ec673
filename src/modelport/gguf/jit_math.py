"""ggml's float32 scalar arithmetic compiled with numba, for the quantizers whose search is a loop per group.

Why numba: the grid IQ types (IQ1_S ... IQ3_S) search a lattice group by group with data-dependent branches;
vectorised in NumPy they reached only 0.2-0.5x of ggml's single core (issue 19, docs/gguf.md §10), however the
work was laid out. A loop compiled by numba runs at C speed and stays plain Python source: nothing for the user
to build, and no C code to keep in step with ggml.

Byte identity with ggml's C needs the same float32 operations in the same order: kernels are compiled without
fastmath (no fused multiply-adds, no reassociation), and every constant must be an F32(...) (a Python float
literal makes the expression float64 in numba, as in NumPy).

Imported only by the kernel modules, and those only when a kernel first runs (`import numba` costs ~0.5 s, which
no command that does not quantize should pay). Compiled code is cached on disk by numba (`cache=True`: beside
the module, or under NUMBA_CACHE_DIR where that is not writable).
"""

from __future__ import annotations

import numba
import numpy as np

F32 = np.float32

#: The decorator for every kernel and helper: cached, releases the GIL (chunks run on a thread pool), and
#: division by zero gives inf/nan as in C instead of raising.
jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@jit
def nearest_int(v):
    """ggml's nearest_int on a float32, bit for bit: round half to even below 2^22 in magnitude; beyond (ggml asserts
    against it only in debug builds) the mantissa of v + 1.5 * 2^23, as its release builds return."""
    if abs(v) < F32(4194303.0):
        return int(np.rint(v))
    bits = np.empty(1, np.float32)
    bits[0] = v + F32(12582912.0)
    return (int(bits.view(np.int32)[0]) & 0x007FFFFF) - 0x00400000
