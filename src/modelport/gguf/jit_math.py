"""ggml's float32 scalar arithmetic compiled with numba, for the quantizers whose search is a loop per group.

Why numba: the grid IQ types (IQ1_S ... IQ3_S) search a lattice group by group with data-dependent branches;
vectorised in NumPy they reached only 0.2-0.5x of ggml's single core (issue 19, docs/gguf.md §6.3), however the
work was laid out. A loop compiled by numba runs at C speed and stays plain Python source: nothing for the user
to build, and no C code to keep in step with ggml.

Byte identity with ggml's C needs the same float32 operations in the same order: kernels are compiled without
fastmath (no fused multiply-adds, no reassociation), and every constant must be an F32(...) (a Python float
literal makes the expression float64 in numba, as in NumPy).

Imported only by the kernel modules, and those only when a kernel first runs (`import numba` costs ~0.5 s, which
no command that does not quantize should pay). Compiled code is cached on disk by numba (`cache=True`: beside
the module, or under NUMBA_CACHE_DIR where that is not writable). numba keys that cache on each kernel module's
own source file, not on this one: after editing a helper here, delete the kernel modules' cached `*.nbi`/`*.nbc`
(or touch their sources), or they keep the old helper compiled in.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

F32 = np.float32

#: The decorator for every kernel and helper: cached, releases the GIL (chunks run on a thread pool), and
#: division by zero gives inf/nan as in C instead of raising.
jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@intrinsic
def _f32_bits(typingctx, v):
    """The bits of a float32 as an int32 (C's memcpy from float to int)."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))

    return types.int32(types.float32), codegen


@jit
def nearest_int(v):
    """ggml's nearest_int, bit for bit: v converted to float32 (C's argument is a float), plus 1.5 * 2^23, and the
    low mantissa bits read back; round half to even below 2^22 in magnitude (ggml asserts that only in debug builds:
    beyond, this wraps as its release builds do)."""
    return (_f32_bits(F32(v) + F32(12582912.0)) & 0x007FFFFF) - 0x00400000


@jit
def block_sigma2(xb, mul):
    """ggml's sigma2 of a 256-element block: mul * sum(x^2) / 256, summed in C's order (mul 1 for IQ2_XXS/XS, 2 for
    the other IQ types)."""
    s = F32(0)
    for i in range(xb.size):
        s += xb[i] * xb[i]
    return F32(mul) * s / F32(xb.size)
