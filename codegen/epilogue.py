"""The store epilogue both kernel templates share: bias, then a store or a split-K atomic add.

Kept as source text (not a `@triton.jit` helper) so every emitted kernel file stays one readable
function; `render(acc)` names the fp32 [BLOCK_M, BLOCK_N] accumulator it finishes.
"""

from __future__ import annotations

from string import Template

EPILOGUE = Template('''\
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if SPLIT_K > 1:
            bias = tl.where(pid_k == 0, bias, 0.0)  # one split adds the bias
        ${acc} += bias[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, ${acc}.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tl.atomic_add(y_ptrs, ${acc}, mask=y_mask, sem="relaxed")
''')


def render(acc: str) -> str:
    """The epilogue for the accumulator variable `acc`."""
    return EPILOGUE.substitute(acc=acc)
