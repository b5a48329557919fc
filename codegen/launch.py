"""Host-side launch code template, appended to every emitted kernel file.

It makes an emitted file usable on its own: `linear(x, tensors, bias=None, config=None)` checks
the tensors against the specialization (a wrong shape would read out of bounds, so this is
cheap insurance), picks GEMV or GEMM by M, allocates the output in the activation dtype and
launches once. Split-K needs a workspace and per-tile counters (epilogue.py): they are
allocated once per (device, tiles, split, tile shape), cached in `_WORKSPACES` and reused by
every later launch (the kernels leave the counters at 0), so a CUDA graph captures fixed
addresses and nothing is cleared between replays. Launches of one stream never overlap, so
layers of the same shape can share them. `config` is a dict as
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


_WORKSPACES = {}  # (device, tiles, split, BLOCK_M, BLOCK_N) -> (fp32 workspace, int32 counters)


def split_k_workspace(device, tiles, split, block_m, block_n):
    """The split-K workspace [tiles, split, block_m, block_n] and counters [tiles] (zeroed once:
    every launch leaves them at 0)."""
    key = (str(device), tiles, split, block_m, block_n)
    hit = _WORKSPACES.get(key)
    if hit is None:
        hit = (torch.empty(tiles * split * block_m * block_n, device=device, dtype=torch.float32),
               torch.zeros(tiles, device=device, dtype=torch.int32))
        _WORKSPACES[key] = hit
    return hit


def _launch(kernel, x, tensors, bias, cfg, block_m, m_tiles, extra):
    m = x.shape[0]
    split = cfg["SPLIT_K"]
    y = torch.empty((m, N), device=x.device, dtype=x.dtype)
    scales = tensors["scales"]
    tiles = m_tiles * triton.cdiv(N, cfg["BLOCK_N"])
    if split > 1:  # partial tiles meet in the workspace; the last split reduces (epilogue.py)
        ws, locks = split_k_workspace(x.device, tiles, split, block_m, cfg["BLOCK_N"])
    else:
        ws, locks = y, y  # never read (SPLIT_K is constexpr 1)

    def part(key):  # absent parts are never read (constexpr-disabled): pass any pointer
        t = tensors.get(key)
        return scales if t is None else t

    kernel[(tiles, split)](
        x, tensors["codes"], scales, part("zeros"), part("meta"), part("global_scale"),
        scales if bias is None else bias, y, ws, locks,
        m, N, K, GROUP_SIZE,
        x.stride(0), y.stride(0),
        BITS, ELEMS_PER_UNIT, UNIT_LOADS, HAS_ZERO, HAS_META, HAS_GLOBAL_SCALE, bias is not None,
        BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], SPLIT_K=split,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **extra,
    )
    return y


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
    if _use_gemm16(x, tensors, cfg):  # fp16 decode, tensor cores (gemm16.py)
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        return _launch(GEMM16_KERNEL, x, tensors, bias, cfg, cfg["BLOCK_M"], m_tiles,
                       {"GROUP_M": cfg["GROUP_M"], "USE_ASM": not interpret})
    return _launch(GEMM_FP32_KERNEL, x, tensors, bias, cfg, cfg["BLOCK_M"], m_tiles,
                   {"GROUP_M": cfg["GROUP_M"]})


def _use_gemm16(x, tensors, cfg):
    """The fp16-decode GEMM serves fp16 activations (QC_GEMM=fp32 forces the fp32 one); it
    reads the codes as int32 words."""
    return (GEMM16_KERNEL is not None and x.dtype == torch.float16
            and K % 8 == 0 and cfg["BLOCK_K"] % 8 == 0
            and os.environ.get("QC_GEMM", "") != "fp32"
            and tensors["codes"].data_ptr() % 4 == 0)


def linear(x, tensors, bias=None, config=None):
    """y = x @ W^T (+ bias) for x [M, K]: the GEMV for M <= GEMV_MAX_M, else the GEMM."""
    if x.shape[0] == 0:
        return x.new_empty((0, N))
    if x.shape[0] <= GEMV_MAX_M:
        return gemv(x, tensors, bias, config)
    return gemm(x, tensors, bias, config)
'''
