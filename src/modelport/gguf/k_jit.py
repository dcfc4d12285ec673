"""Q3_K compiled with numba: ggml's `quantize_row_q3_K_ref` (no importance weights), and the tail that it shares
with `quantize_row_q3_K_impl` (re-quantizing with the stored scales, packing).

Why a loop: `make_q3_quants` is a coordinate descent over the 16 values of a sub-block (up to 5 passes, the two
sums updated after each accepted change), sequential by nature; NumPy could only run it in rounds over all
sub-blocks at once and reached 0.39-0.59x of ggml's single core. As a loop it runs at ggml's speed or above
(docs/gguf.md §6.3).

Byte identity: float32 in C's expression order (`w*x*l` is (w*x)*float(l)), sequential sums, ggml's nearest_int
bit trick (which also decides the NaN/inf cases: NaN gives 0), `(int8_t)` casts as two's-complement wrap-around,
and the first of equal values kept where ggml's `>` does. The fp16 block scale d is rounded in NumPy between the
two kernels (numba has no float16 on the CPU): `q3_k_search` returns d in float32, `q3_k_pack` takes its fp16 value.

Imported by `quants` only when Q3_K is first quantized (`import numba` costs ~0.5 s).
"""

from __future__ import annotations

import numpy as np

from .jit_math import F32, jit, nearest_int

QK_K = 256
_EPS = F32(1e-15)           # ggml's GROUP_MAX_EPS


@jit
def _clamp(v, lo, hi):
    return max(lo, min(hi, v))


@jit
def q3_k_search(x, xb, levels, code, d):
    """quantize_row_q3_K_ref up to its fp16 scale, for the (nb, 256) float32 blocks x (xb: the same memory as
    uint32): make_q3_quants(16, 4, do_rmse) per sub-block into levels (nb, 256) int8 (0..7), the 6-bit scale codes
    into code (nb, 16) uint8 and the block scale 1/iscale into d (nb,) float32 (0 where every sub-block scale is 0,
    its codes then 0).

    The element loops have a run-time length n (16) so that LLVM vectorises them: |x|'s max as an integer max of the
    float bits (then the first element of that |x|, as ggml's `>` keeps it), the first levels, and each element's
    terms w*x*l and w*l*l of the two sums, which are then added in order. The descent itself is ggml's loop, with
    those terms kept per element (updated where a level changes) instead of recomputed."""
    n = x.shape[1] // 16
    scales = np.empty(16, np.float32)
    wx = np.empty(n, np.float32)
    w = np.empty(n, np.float32)
    t1 = np.empty(n, np.float32)
    t2 = np.empty(n, np.float32)
    lv = np.empty(n, np.int32)
    for i in range(x.shape[0]):
        for s in range(16):
            o = n * s
            abits = np.uint32(0)
            for k in range(n):
                abits = max(abits, np.uint32(xb[i, o + k] & np.uint32(0x7FFFFFFF)))
            at = np.int32(n - 1)
            for k in range(n):
                at = min(at, np.int32(k) if np.uint32(xb[i, o + k] & np.uint32(0x7FFFFFFF)) == abits else np.int32(n - 1))
            mx = x[i, o + at]
            if abs(mx) < _EPS:                                      # all zero: levels 0 (ggml does not add 4)
                for k in range(n):
                    levels[i, o + k] = 0
                scales[s] = F32(0.0)
                continue
            iscale = F32(-4.0) / mx
            for k in range(n):
                xk = x[i, o + k]
                li = _clamp(nearest_int(iscale * xk), -4, 3)
                lv[k] = li
                w[k] = xk * xk
                wx[k] = w[k] * xk
                t1[k] = wx[k] * F32(li)
                t2[k] = w[k] * F32(li) * F32(li)
            sumlx = F32(0.0)
            suml2 = F32(0.0)
            for k in range(n):
                sumlx += t1[k]
                suml2 += t2[k]
            if sumlx > F32(0.0):            # else no slx = sumlx - term is > 0 (every term has the sign of -mx)
                for _ in range(5):
                    changed = False
                    for k in range(n):
                        slx = sumlx - t1[k]
                        if slx > F32(0.0):
                            sl2 = suml2 - t2[k]
                            nl = _clamp(nearest_int(x[i, o + k] * sl2 / slx), -4, 3)
                            if nl != lv[k]:
                                a = wx[k] * F32(nl)
                                b = w[k] * F32(nl) * F32(nl)
                                slx += a
                                sl2 += b
                                if sl2 > F32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                                    lv[k] = nl
                                    t1[k] = a
                                    t2[k] = b
                                    sumlx = slx
                                    suml2 = sl2
                                    changed = True
                    if not changed:
                        break
            for k in range(n):
                levels[i, o + k] = lv[k] + 4
            scales[s] = sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)
        max_scale = F32(0.0)
        amax = F32(0.0)
        for s in range(16):
            if abs(scales[s]) > amax:
                amax = abs(scales[s])
                max_scale = scales[s]
        if max_scale != F32(0.0):                                   # C's `if (max_scale)`: NaN is true
            iscale = F32(-32.0) / max_scale
            for s in range(16):
                l8 = ((nearest_int(iscale * scales[s]) + 128) & 255) - 128      # (int8_t)
                code[i, s] = _clamp(l8, -32, 31) + 32
            d[i] = F32(1.0) / iscale
        else:
            for s in range(16):
                code[i, s] = 0
            d[i] = F32(0.0)


@jit
def q3_k_pack(x, levels, code, d16, out):
    """The tail of quantize_row_q3_K_ref/_impl: each sub-block with a nonzero d = d16 * (code - 32) re-quantized
    to nearest_int(x / d) in [-4, 3] (the others keep their levels from the search, 0..7), then the (nb, 110)
    block bytes: hmask[32] (element j: bit j // 32 of byte j % 32, set for levels > 3), qs[64] (the low two bits,
    four elements 32 apart a byte), scales[12] (the codes' low nibbles, then their top two bits); bytes 108-109,
    the fp16 d, are the caller's."""
    n = x.shape[1] // 16                                            # 16, a run-time value so that LLVM vectorises
    for i in range(x.shape[0]):
        for s in range(16):
            dl = d16[i] * F32(np.int32(code[i, s]) - 32)
            if dl != F32(0.0):                                      # C's `if (!d) continue`: NaN goes on
                for k in range(n):
                    levels[i, n * s + k] = _clamp(nearest_int(x[i, n * s + k] / dl), -4, 3) + 4
        for m in range(32):
            hm = 0
            for b in range(8):
                if levels[i, 32 * b + m] > 3:
                    hm |= 1 << b
            out[i, m] = hm
        for h in range(2):
            for m in range(32):
                j = 128 * h + m
                out[i, 32 + 32 * h + m] = ((levels[i, j] & 3) | ((levels[i, j + 32] & 3) << 2)
                                           | ((levels[i, j + 64] & 3) << 4) | ((levels[i, j + 96] & 3) << 6))
        for s in range(8):
            out[i, 96 + s] = (code[i, s] & 15) | ((code[i, s + 8] & 15) << 4)
        for s in range(4):
            out[i, 104 + s] = ((code[i, s] >> 4) | ((code[i, s + 4] >> 4) << 2) | ((code[i, s + 8] >> 4) << 4)
                               | ((code[i, s + 12] >> 4) << 6))
