"""GEMV template: decode-time kernels (M = 1..4) with the dequantization fused in.

(For M = 1 with fp16 activations, 4-bit formats run the fp16x2 kernel of gemv16.py; this fp32
kernel serves the rest and stays selectable with QC_GEMV=fp32 for comparisons.)

Decode is memory-bound: the kernel must stream the packed weights once at full bandwidth and
do as little per code as possible. So:
- each program owns BLOCK_N output rows and every SPLIT_K-th K tile (split-K fills the GPU
  when N alone gives too few programs: 4096 rows / 32 = 128 programs < 2 waves on an H100);
- packed codes load as whole packing units (bytes, or 3-byte words for 3-bit codes): no byte
  is loaded twice and nothing is interleaved. Code plane i (bits i*BITS of every unit) is
  decoded and multiplied with x[:, unit*E + i], a strided slice of the activation rows, which
  are tiny and stay in L1;
- a K tile is viewed as [tile groups, units per group] (one group when BLOCK_K <= G), so group
  data (scale, zero, metadata) is loaded and turned into decode operands by the format's
  `group_params_*` once per (row, group), then `dequant_*` runs per code, right before the FMA;
- fp32 products accumulate elementwise in a register tile and are reduced across lanes once,
  after the loop: a tl.sum per tile put warp shuffles in the hot loop (in the sm_90 SASS they
  outnumbered the FMAs). With SPLIT_K > 1 the partial tiles meet in a workspace and the
  last split to arrive reduces them (epilogue.py: one launch, no zero-fill, no cast back).

Cost per code in the sm_90 SASS of the loop (Triton 3.9, M = 1, checked by compiling without a
GPU): about 7 instructions for int4, 8-9 for fp4 / pot4 / mxfp4, 12-13 for razer4 (the special
-code select), 18 for nf4 (the select tree).

This module holds the kernel as a source template (emit.py fills in the names) rather than a
live jit function because every emitted file carries its own copy, renamed after its
specialization (`qc_razer4_gemv_n4096_k4096_g128`); the runtime only ever launches emitted
files, so the template is tested through them.
"""

from __future__ import annotations

from string import Template

from qcompiler.codegen import epilogue, kernel_abi
from qcompiler.codegen.decode_plan import DecodePlan
from qcompiler.codegen.dequant import dequant_fn_name, group_fn_name

KERNEL = Template(kernel_abi.signature() + '''\
    """y[m, n] = sum_k x[m, k] * W[n, k] for M <= BLOCK_M, W decoded on the fly (${format})."""
    UNITS: tl.constexpr = K // ELEMS_PER_UNIT  # packing units per weight row
    ROW_STRIDE: tl.constexpr = UNITS * UNIT_LOADS  # bytes per packed row
    GROUPS: tl.constexpr = K // GROUP_SIZE
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    BLOCK_U: tl.constexpr = BLOCK_K // ELEMS_PER_UNIT  # packing units per K tile
    # A K tile is TILE_GROUPS x GROUP_UNITS units: [1, BLOCK_U] when it lies inside one group,
    # [BLOCK_K / GROUP_SIZE, units per group] when it spans whole groups. Either way the group
    # data is one value per (row, tile group), decoded once and broadcast over the codes.
    TILE_GROUPS: tl.constexpr = (BLOCK_K + GROUP_SIZE - 1) // GROUP_SIZE
    GROUP_UNITS: tl.constexpr = BLOCK_U // TILE_GROUPS

    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_tg = tl.arange(0, TILE_GROUPS)
    tile_u = offs_tg[:, None] * GROUP_UNITS + tl.arange(0, GROUP_UNITS)[None, :]
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m[:, None, None, None] * stride_xm  # [BLOCK_M, 1, 1, 1]
    w_rows = codes_ptr + offs_n[:, None, None] * ROW_STRIDE  # [BLOCK_N, 1, 1]
    g_rows = offs_n[:, None] * GROUPS  # [BLOCK_N, 1]
    if HAS_GLOBAL_SCALE:
        gscale = tl.load(gscale_ptr).to(tl.float32)
    else:
        gscale = 1.0

    # products accumulate elementwise; the cross-lane reduction over K runs once, after the loop
    acc = tl.zeros((BLOCK_M, BLOCK_N, TILE_GROUPS, GROUP_UNITS), dtype=tl.float32)
    for u0 in range(pid_k * BLOCK_U, UNITS, SPLIT_K * BLOCK_U):
        u = u0 + tile_u  # [TILE_GROUPS, GROUP_UNITS]
        u_mask = u < UNITS
        w_mask = n_mask[:, None, None] & u_mask[None, :, :]
        # packed weights: one packing unit per column (a byte; 3 bytes for 3-bit codes)
        if UNIT_LOADS == 1:
            units = tl.load(w_rows + u[None, :, :], mask=w_mask, other=0).to(tl.int32)
        else:
            p = w_rows + u[None, :, :] * UNIT_LOADS
            units = (tl.load(p, mask=w_mask, other=0).to(tl.int32)
                     | (tl.load(p + 1, mask=w_mask, other=0).to(tl.int32) << 8)
                     | (tl.load(p + 2, mask=w_mask, other=0).to(tl.int32) << 16))
        # group data: one value per (row, tile group)
        g = (u0 * ELEMS_PER_UNIT) // GROUP_SIZE + offs_tg
        g_offs = g_rows + g[None, :]  # [BLOCK_N, TILE_GROUPS]
        g_mask = n_mask[:, None] & (g < GROUPS)[None, :]
        scale_raw = tl.load(scales_ptr + g_offs, mask=g_mask, other=0)
        if HAS_ZERO:
            zero_raw = tl.load(zeros_ptr + g_offs, mask=g_mask, other=0)
        else:
            zero_raw = 0
        if HAS_META:
            meta_raw = tl.load(meta_ptr + g_offs, mask=g_mask, other=0)
        else:
            meta_raw = 0
        s, aux = ${group_fn}(scale_raw, zero_raw, meta_raw, gscale)
        s = s[:, :, None]
        aux = aux[:, :, None]
        for i in tl.static_range(ELEMS_PER_UNIT):
            codes = (units >> (i * BITS)) & CODE_MASK
            w = ${dequant_fn}(codes, s, aux)  # fp32 [BLOCK_N, TILE_GROUPS, GROUP_UNITS]
            # x is loaded straight into the broadcast shape [BLOCK_M, 1, groups, units]
            xk = tl.load(x_rows + (u * ELEMS_PER_UNIT + i)[None, None, :, :],
                         mask=m_mask[:, None, None, None] & u_mask[None, None, :, :], other=0.0)
            acc += xk.to(tl.float32) * w[None, :, :, :]

    y = tl.sum(tl.sum(acc, axis=3), axis=2)  # [BLOCK_M, BLOCK_N]
${epilogue}''')


def render(name: str, plan: DecodePlan) -> str:
    """The GEMV kernel for `plan`, named `name`."""
    return KERNEL.substitute(name=name, format=plan.format, group_fn=group_fn_name(plan),
                             dequant_fn=dequant_fn_name(plan),
                             epilogue=epilogue.render("y"))
