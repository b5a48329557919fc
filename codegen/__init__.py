"""qcompiler.codegen: Triton kernels with fused dequantization, one per quantized layer shape.

- `decode_plan`  what a kernel needs to know about a format, asked of the format registry
- `dequant`      the per-format-family `@triton.jit` dequant helpers (copied into emitted files)
- `gemv`, `gemm` the two kernel templates (decode M <= 4, and tl.dot tiles)
- `specialize`   KernelSpec, M buckets, tile configs and their pruning
- `emit`         emit_kernel / emit_all: readable, deterministic kernel files + index.json
- `autotune_cache`, `runtime`  tuned configs per GPU, and `linear` / `load_kernels`

Submodules are imported on use; importing this package loads nothing heavy.
"""
