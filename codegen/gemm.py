"""GEMM template: M > 4 (prefill, batched decode) with the dequantization fused before tl.dot.

Same weight walk as the GEMV (gemv.py): packed units load as a [BLOCK_K / codes-per-unit,
BLOCK_N] tile, group data becomes decode operands once per tile, and each code plane i is
decoded to the activation dtype and multiplied with the strided x slice x[:, unit*E + i] by
`tl.dot`. Splitting K into planes instead of interleaving the decoded codes keeps to
operations every Triton from 3.0 on lowers well (no tl.join / tl.gather); the price is that
the per-plane dot K dimension is BLOCK_K / codes-per-unit, which must be >= 16 (pruned in
specialize.py).

The dot runs in the activation dtype: fp16 or bf16 tensor cores, and TF32 for float32
activations (Triton's default input precision; the weights are 4-bit anyway).

Program order is grouped (GROUP_M row tiles walk the same weight columns together) so weight
tiles are reused from L2. SPLIT_K > 1 (small M only) reduces through the epilogue's
workspace (epilogue.py).
"""

from __future__ import annotations

from string import Template

from qcompiler.codegen import epilogue, kernel_abi
from qcompiler.codegen.decode_plan import DecodePlan
from qcompiler.codegen.dequant import dequant_fn_name, group_fn_name

KERNEL = Template(kernel_abi.signature('GROUP_M') + '''\
    """y = x @ W^T for any M, W decoded on the fly tile by tile (${format})."""
    UNITS: tl.constexpr = K // ELEMS_PER_UNIT  # packing units per weight row
    BLOCK_U: tl.constexpr = BLOCK_K // ELEMS_PER_UNIT  # packing units per K tile
    ROW_STRIDE: tl.constexpr = UNITS * UNIT_LOADS  # bytes per packed row
    GROUPS: tl.constexpr = K // GROUP_SIZE
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    NUM_PID_N: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N

    # grouped program order: GROUP_M row tiles share each weight tile while it is in L2
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    group_id = pid // (GROUP_M * NUM_PID_N)
    first_m = group_id * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * NUM_PID_N)) % rows_in_group
    pid_n = (pid % (GROUP_M * NUM_PID_N)) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_u = tl.arange(0, BLOCK_U)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m[:, None] * stride_xm  # [BLOCK_M, 1]
    w_cols = codes_ptr + offs_n[None, :] * ROW_STRIDE  # [1, BLOCK_N]
    g_cols = offs_n[None, :] * GROUPS  # [1, BLOCK_N]
    if HAS_GLOBAL_SCALE:
        gscale = tl.load(gscale_ptr).to(tl.float32)
    else:
        gscale = 1.0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for u0 in range(pid_k * BLOCK_U, UNITS, SPLIT_K * BLOCK_U):
        # each tile starts on a multiple of BLOCK_U: tell the compiler, so unit loads vectorize
        u = tl.max_contiguous(tl.multiple_of(u0 + offs_u, BLOCK_U), BLOCK_U)
        u_mask = u < UNITS
        w_mask = u_mask[:, None] & n_mask[None, :]
        # packed weights, transposed: [BLOCK_U, BLOCK_N] units (a byte; 3 bytes for 3-bit codes)
        if UNIT_LOADS == 1:
            units = tl.load(w_cols + u[:, None], mask=w_mask, other=0).to(tl.int32)
        else:
            p = w_cols + u[:, None] * UNIT_LOADS
            units = (tl.load(p, mask=w_mask, other=0).to(tl.int32)
                     | (tl.load(p + 1, mask=w_mask, other=0).to(tl.int32) << 8)
                     | (tl.load(p + 2, mask=w_mask, other=0).to(tl.int32) << 16))
        # group data: the tile lies in one group per column, or holds whole groups per row
        if BLOCK_K <= GROUP_SIZE:
            g_offs = g_cols + (u0 * ELEMS_PER_UNIT) // GROUP_SIZE
            g_mask = n_mask[None, :]
        else:
            g_offs = g_cols + ((u * ELEMS_PER_UNIT) // GROUP_SIZE)[:, None]
            g_mask = w_mask
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
        for i in tl.static_range(ELEMS_PER_UNIT):
            codes = (units >> (i * BITS)) & CODE_MASK
            w = ${dequant_fn}(codes, s, aux).to(x_ptr.dtype.element_ty)  # [BLOCK_U, BLOCK_N]
            xk = tl.load(x_rows + (u * ELEMS_PER_UNIT + i)[None, :],
                         mask=m_mask[:, None] & u_mask[None, :], other=0.0)
            acc = tl.dot(xk, w, acc)

${epilogue}''')


def render(name: str, plan: DecodePlan) -> str:
    """The GEMM kernel for `plan`, named `name`."""
    return KERNEL.substitute(name=name, format=plan.format, group_fn=group_fn_name(plan),
                             dequant_fn=dequant_fn_name(plan),
                             epilogue=epilogue.render("acc"))
