"""The grid quantization types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S): filled in by their own
work; `quants` registers every kernel listed here.

GRID_KERNELS maps a GGML type name to (kernel, blocks per chunk); a kernel takes the (nblocks, 256) float32 blocks
and their importance weights (same shape, or None) and returns (nblocks, type_size) uint8, as ggml writes them."""

from __future__ import annotations

GRID_KERNELS: dict = {}
