"""The parameter list every generated linear kernel takes (gemv, gemm, gemv16, gemm16).

One text for all four because `launch.py` calls whichever kernel a layer's shape and format
select with the same arguments in the same order: the packed weight's parts, the activation
and output pointers, the split-K workspace, the sizes, strides and the format's constexprs.
A kernel adds only its own tiling constexprs at the end (`GROUP_M`, `USE_ASM`), which the
launcher passes by keyword. Kept as source text, like `epilogue.py`, so every emitted kernel
file stays one readable function.
"""

from __future__ import annotations

_HEADER = '''\
@triton.jit
def ${name}(
    # -- pointers -----------------------------------------------------------------------
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, meta_ptr, gscale_ptr, bias_ptr, y_ptr,
    ws_ptr, lock_ptr,  # split-K workspace and per-tile counters (epilogue.py)
    # -- sizes ----------------------------------------------------------------------------
    M,
    N: tl.constexpr, K: tl.constexpr, GROUP_SIZE: tl.constexpr,
    # -- strides (rows of x and y; packed weights and group tensors are contiguous) -------
    stride_xm, stride_ym,
    # -- format meta ----------------------------------------------------------------------
    BITS: tl.constexpr, ELEMS_PER_UNIT: tl.constexpr, UNIT_LOADS: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_META: tl.constexpr, HAS_GLOBAL_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    # -- tiling meta ----------------------------------------------------------------------
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,'''


def signature(*extra: str) -> str:
    """`@triton.jit` and `def ${name}(...):` with the shared parameters, then the kernel's own
    constexpr parameters `extra` (names); `${name}` is left for the kernel's Template."""
    tail = "".join(f" {p}: tl.constexpr," for p in extra)
    return f"{_HEADER}{tail}\n):\n"
