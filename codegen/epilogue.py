"""The store epilogue every kernel template shares: bias, then a store or a split-K reduction.

Kept as source text (not a `@triton.jit` helper) so every emitted kernel file stays one readable
function; `render(acc)` names the fp32 [BLOCK_M, BLOCK_N] accumulator it finishes.

Split-K in one launch (no zero-fill, no atomics on the output, no cast-back launch): the K
splits of an output tile are programs (tl.program_id(0) = tile, tl.program_id(1) = split). Each
- stores its fp32 partial tile with plain stores into its own slot of a workspace
  [tiles, SPLIT_K, BLOCK_M, BLOCK_N] (every element is written, so the workspace needs no
  zero-fill);
- then, after a CTA barrier (all its threads' stores precede the release), increments the
  tile's int32 counter with one acq_rel atomic at GPU scope;
- the program that sees SPLIT_K - 1 (the last to arrive, whichever split that is) reads the
  SPLIT_K partials (".cg": from L2, never a stale L1 line), sums them in split order (the
  result does not depend on the arrival order: bitwise reproducible), adds the bias, stores
  y in the activation dtype and resets the counter to 0.
So after every launch all counters are 0 again and the workspace may hold anything: the
launcher allocates both once per (device, tiles, split, tile shape) and reuses them, which is
what a CUDA graph needs (static addresses, nothing to clear between replays).

A template using this epilogue must define, before it: `pid_k` (the split), `offs_m`,
`offs_n`, `m_mask`, `n_mask` (the tile's rows and columns), and take the parameters `bias_ptr`,
`y_ptr`, `ws_ptr` (fp32 workspace), `lock_ptr` (int32 counters, one per tile), `stride_ym`,
`HAS_BIAS`, `BLOCK_M`, `BLOCK_N` and `SPLIT_K`, with the grid (tiles, SPLIT_K).
"""

from __future__ import annotations

from string import Template

EPILOGUE = Template('''\
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            ${acc} += bias[None, :]
        tl.store(y_ptrs, ${acc}.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        # split-K: partial tile -> workspace; the last split to arrive reduces (epilogue.py)
        tile = tl.program_id(0)
        in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ws = ws_ptr + tile * (SPLIT_K * BLOCK_M * BLOCK_N) + in_tile
        tl.store(tile_ws + pid_k * (BLOCK_M * BLOCK_N), ${acc}, cache_modifier=".cg")
        tl.debug_barrier()  # every thread's partial is stored before the release below
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(tile_ws + s * (BLOCK_M * BLOCK_N), cache_modifier=".cg")
            if HAS_BIAS:
                bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
                total += bias[None, :]
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.store(lock_ptr + tile, 0)  # every split has arrived: ready for the next launch
''')


def render(acc: str) -> str:
    """The epilogue for the accumulator variable `acc`."""
    return EPILOGUE.substitute(acc=acc)
