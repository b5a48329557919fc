"""Host-side launch code template, appended to every emitted kernel file.

It makes an emitted file usable on its own: `linear(x, tensors, bias=None, config=None)` checks
the tensors against the specialization (a wrong shape would read out of bounds, so this is
cheap insurance), picks GEMV or GEMM by M, allocates the output (fp32 and zero-filled when
split-K accumulates with atomics) and launches. `config` is a dict as
`KernelConfig.as_launch_dict()` returns; without one, the file's DEFAULT_CONFIGS (the untuned
rule of specialize.default_config, for an H100-sized GPU) apply. The runtime passes tuned
configs. The text refers only to the module constants emit.py writes above it.
"""

from __future__ import annotations

LAUNCHER = '''\
def _bucket(m):
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


def _check(x, tensors, bias):
    if x.dim() != 2 or x.shape[1] != K or x.stride(1) != 1:
        raise ValueError(f"{GEMV_NAME}: expected x as a row-major [M, {K}] tensor, "
                         f"got shape {tuple(x.shape)} strides {tuple(x.stride())}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{GEMV_NAME}: x must be float16, bfloat16 or float32, got {x.dtype}")
    for key, (shape, dtype) in PARTS.items():
        t = tensors.get(key)
        if t is None:
            raise ValueError(f"{GEMV_NAME}: tensor '{key}' is missing")
        # float parts (scales) may be any float dtype; bit patterns must be exactly their dtype
        dtype_ok = t.is_floating_point() if dtype.is_floating_point else t.dtype == dtype
        if (not dtype_ok or tuple(t.shape) != shape or not t.is_contiguous()
                or t.device != x.device):
            raise ValueError(f"{GEMV_NAME}: tensor '{key}' must be a contiguous {dtype} {shape} "
                             f"on {x.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    if bias is not None and (tuple(bias.shape) != (N,) or not bias.is_contiguous()):
        raise ValueError(f"{GEMV_NAME}: bias must be a contiguous ({N},) tensor")


def _launch(kernel, x, tensors, bias, cfg, block_m, m_tiles, extra):
    m = x.shape[0]
    split = cfg["SPLIT_K"]
    if split > 1:  # partial sums meet in fp32 through atomics
        y = torch.zeros((m, N), device=x.device, dtype=torch.float32)
    else:
        y = torch.empty((m, N), device=x.device, dtype=x.dtype)
    scales = tensors["scales"]

    def part(key):  # absent parts are never read (constexpr-disabled): pass any pointer
        t = tensors.get(key)
        return scales if t is None else t

    grid = (m_tiles * triton.cdiv(N, cfg["BLOCK_N"]), split)
    kernel[grid](
        x, tensors["codes"], scales, part("zeros"), part("meta"), part("global_scale"),
        scales if bias is None else bias, y,
        m, N, K, GROUP_SIZE,
        x.stride(0), y.stride(0),
        BITS, ELEMS_PER_UNIT, UNIT_LOADS, HAS_ZERO, HAS_META, HAS_GLOBAL_SCALE, bias is not None,
        BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT_K=split,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **extra,
    )
    return y if split == 1 else y.to(x.dtype)


def gemv(x, tensors, bias=None, config=None):
    """Decode path: 1 <= M <= GEMV_MAX_M."""
    _check(x, tensors, bias)
    m = x.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"{GEMV_NAME}: the GEMV takes 1..{GEMV_MAX_M} rows, got {m}")
    bucket = _bucket(m)
    cfg = config or DEFAULT_CONFIGS["gemv"][bucket]
    if _use_gemv16(x, tensors, cfg):
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        return _launch(GEMV16_KERNEL, x, tensors, bias, cfg, 1, 1, {"USE_ASM": not interpret})
    return _launch(GEMV_FP32_KERNEL, x, tensors, bias, cfg, bucket, 1, {})


def _use_gemv16(x, tensors, cfg):
    """The fp16x2 GEMV serves M = 1 with fp16 activations (QC_GEMV=fp32 forces the fp32 one)."""
    return (GEMV16_KERNEL is not None and x.shape[0] == 1 and x.dtype == torch.float16
            and K % 32 == 0 and cfg["BLOCK_K"] % 32 == 0
            and (GROUP_SIZE % 32 == 0 or GROUP_SIZE == 16)  # a chunk never straddles groups
            and os.environ.get("QC_GEMV", "") != "fp32"
            and x.data_ptr() % 16 == 0 and tensors["codes"].data_ptr() % 16 == 0)


def gemm(x, tensors, bias=None, config=None):
    """Any M >= 1 through tl.dot tiles (used for M > GEMV_MAX_M)."""
    _check(x, tensors, bias)
    m = x.shape[0]
    cfg = config or DEFAULT_CONFIGS["gemm"][_bucket(max(m, GEMV_MAX_M + 1))]
    m_tiles = triton.cdiv(m, cfg["BLOCK_M"])
    return _launch(GEMM_KERNEL, x, tensors, bias, cfg, cfg["BLOCK_M"], m_tiles,
                   {"GROUP_M": cfg["GROUP_M"]})


def linear(x, tensors, bias=None, config=None):
    """y = x @ W^T (+ bias) for x [M, K]: the GEMV for M <= GEMV_MAX_M, else the GEMM."""
    if x.shape[0] == 0:
        return x.new_empty((0, N))
    if x.shape[0] <= GEMV_MAX_M:
        return gemv(x, tensors, bias, config)
    return gemm(x, tensors, bias, config)
'''
