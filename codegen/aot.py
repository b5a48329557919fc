"""Compile emitted kernels for a GPU target on a machine without one (a lowering check).

The interpreter runs kernels as NumPy and never sees Triton's real compiler, so a kernel can
pass every CPU test and still fail to lower (a 64-bit literal in int32 bit tricks, a constexpr
where a tensor is needed, shared memory beyond the target). `triton.compile` with an explicit
target needs no driver: it runs the whole pipeline down to a cubin with the ptxas that ships in
the triton wheel. This tool does that for every kernel family and M bucket of a spec, with the
configs the runtime would try, and can count the SASS instructions of the hot loop per code
(what limits a decode GEMV once it is not waiting on memory).

    python -m qcompiler.codegen.aot --format razer4 --n 4096 --k 11008 --group 128 --sass

Run without TRITON_INTERPRET (the interpreter replaces the jit functions this compiles).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

_TRITON_TYPES = {"uint8": "*u8", "float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}


@dataclass(frozen=True)
class Compiled:
    kernel: str
    config: dict[str, int]
    seconds: float
    shared_bytes: int
    loop_instructions: int | None = None
    codes_per_thread: float | None = None
    loop_sass: tuple[str, ...] = ()  # the hot loop's SASS instructions (with --sass)
    # local-memory instructions (LDL / STL: register spills) in the whole kernel (with --sass)
    local_memory: int | None = None


def compile_kernel(module: ModuleType, kind: str, config: dict[str, int], target: str = "cuda:90",
                   x_dtype: str = "float16", sass: bool = False) -> Compiled:
    """Compile one kernel of an emitted module with `config` for `target` ("cuda:90")."""
    import triton
    from triton.backends.compiler import GPUTarget

    kernels = {"gemv": module.GEMV_KERNEL, "gemm": module.GEMM_KERNEL,
               # the fp32-FMA GEMV the fp16x2 one replaced (QC_GEMV=fp32), for comparisons
               "gemv-fp32": getattr(module, "GEMV_FP32_KERNEL", module.GEMV_KERNEL),
               # the fp32-decode GEMM gemm16 replaced (QC_GEMM=fp32), likewise
               "gemm-fp32": getattr(module, "GEMM_FP32_KERNEL", module.GEMM_KERNEL)}
    if kind == "gemv" and (config["BLOCK_K"] % 32 or module.K % 32
                           or (module.GROUP_SIZE % 32 and module.GROUP_SIZE != 16)):
        kind = "gemv-fp32"  # what the launcher runs then (gemv16 needs whole 32-code chunks)
    kernel = kernels[kind]
    if not hasattr(kernel, "arg_names"):
        raise RuntimeError("TRITON_INTERPRET is set: unset it to compile for a GPU target")
    parts = {k: str(dt).removeprefix("torch.") for k, (_, dt) in module.PARTS.items()}
    pointers = {"x_ptr": _TRITON_TYPES[x_dtype], "codes_ptr": "*u8",
                "scales_ptr": _TRITON_TYPES[parts["scales"]], "zeros_ptr": "*u8",
                "meta_ptr": "*u8", "gscale_ptr": "*fp32", "bias_ptr": _TRITON_TYPES[x_dtype],
                "y_ptr": _TRITON_TYPES[x_dtype],
                "ws_ptr": "*fp32", "lock_ptr": "*i32"}  # split-K workspace (epilogue.py)
    ints = {"M": "i32", "stride_xm": "i32", "stride_ym": "i32"}
    constants = dict(N=module.N, K=module.K, GROUP_SIZE=module.GROUP_SIZE, BITS=module.BITS,
                     ELEMS_PER_UNIT=module.ELEMS_PER_UNIT, UNIT_LOADS=module.UNIT_LOADS,
                     HAS_ZERO=module.HAS_ZERO, HAS_META=module.HAS_META,
                     HAS_GLOBAL_SCALE=module.HAS_GLOBAL_SCALE, HAS_BIAS=False,
                     BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
                     BLOCK_K=config["BLOCK_K"], SPLIT_K=config["SPLIT_K"],
                     GROUP_M=config["GROUP_M"], USE_ASM=True)
    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in pointers or name in ints:
            signature[name] = pointers.get(name) or ints[name]
            if name in pointers or name.startswith("stride"):  # what the JIT specializes on
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            consts[name] = constants[name]
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    arch, cap = target.split(":")
    start = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget(arch, int(cap), 32),
                              options={"num_warps": config["num_warps"],
                                       "num_stages": config["num_stages"]})
    seconds = time.perf_counter() - start
    loop = per_thread = local = None
    body: tuple[str, ...] = ()
    if sass:
        text = _disassemble(compiled.asm["cubin"])
        body = tuple(_largest_loop(text))
        loop = len(body) or None
        local = local_memory_ops(text) if text else None
        # codes one thread decodes per loop iteration (the whole tile, spread over the warps)
        per_thread = config["BLOCK_N"] * config["BLOCK_K"] / (32 * config["num_warps"])
    return Compiled(kernel.__name__ if hasattr(kernel, "__name__") else kind, config, seconds,
                    int(compiled.metadata.shared), loop, per_thread, body, local)


def _loop_instructions(cubin: bytes) -> int | None:
    """Instructions of the largest backward-branch loop in the cubin's SASS (nvdisasm)."""
    return len(loop_sass(cubin)) or None


def loop_sass(cubin: bytes) -> list[str]:
    """The SASS instructions of the cubin's largest backward-branch loop ([] without nvdisasm)."""
    return _largest_loop(_disassemble(cubin))


def _disassemble(cubin: bytes) -> str:
    """nvdisasm's text of a cubin ("" without nvdisasm)."""
    nvdisasm = _tool("nvdisasm")
    if nvdisasm is None:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True,
                              check=False).stdout


def local_memory_ops(text: str) -> int:
    """LDL / STL instructions (register spills to local memory) in nvdisasm text."""
    return len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(?:LDL|STL)\b", text))


def _largest_loop(text: str) -> list[str]:
    """The instructions of the largest backward-branch loop in nvdisasm text."""
    labels: dict[str, int] = {}
    seq: list[str] = []
    for line in text.splitlines():
        label = re.match(r"^\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(seq)
            continue
        ins = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if ins:
            seq.append(ins.group(1))
    best = (0, 0)
    for i, ins in enumerate(seq):
        jump = re.search(r"BRA\s+`\((\.L_x_\d+)\)", ins)
        if jump and labels.get(jump.group(1), i + 1) <= i:
            start = labels[jump.group(1)]
            if i + 1 - start > best[1] - best[0]:
                best = (start, i + 1)
    return seq[best[0]:best[1]]


def _tool(name: str) -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.is_file() else shutil.which(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcompiler.codegen.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, help="format name(s), comma-separated")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--m", default="1,4,16,256", help="M values (comma-separated)")
    parser.add_argument("--target", default="cuda:90", help="backend:arch, e.g. cuda:90, cuda:80")
    parser.add_argument("--all-candidates", action="store_true",
                        help="compile every tuning candidate, not just the default config")
    parser.add_argument("--sass", action="store_true",
                        help="report SASS instructions of the hot loop per code and thread")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET to compile for a GPU target", file=sys.stderr)
        return 2
    from qcompiler.codegen import runtime
    from qcompiler.codegen.specialize import DeviceLimits, make_spec
    from qcompiler.errors import QCompilerError

    limits = DeviceLimits.reference()
    failed = 0
    for fmt in args.format.split(","):
        try:
            spec = make_spec(fmt, args.n, args.k, args.group)
        except QCompilerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        failed += _compile_spec(spec, runtime.module_for(spec), args, limits)
    return 1 if failed else 0


def _compile_spec(spec: Any, module: ModuleType, args: argparse.Namespace, limits: Any) -> int:
    """Compile every M bucket's config(s) of one spec; print a line each; return failures."""
    from qcompiler.codegen.specialize import candidates, default_config, kind_for, m_bucket

    failed = 0
    for m in sorted({m_bucket(int(v)) for v in args.m.split(",")}):
        kind = kind_for(m)
        configs = (candidates(spec, kind, m, limits) if args.all_candidates
                   else [default_config(spec, kind, m, limits)])
        for cfg in configs:
            launch = cfg.as_launch_dict()
            # M = 1 runs the fp16x2 GEMV (when the format has one); M = 2..4 the fp32 GEMV
            name = "gemv-fp32" if kind.value == "gemv" and m > 1 else kind.value
            try:
                c = compile_kernel(module, name, launch, args.target, sass=args.sass)
            except Exception as e:  # noqa: BLE001  report and go on: show every failure
                failed += 1
                print(f"FAIL {spec.kernel_name(kind)} m{m} {_short(launch)}: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            extra = ""
            if c.loop_instructions and c.codes_per_thread:
                extra = (f" loop={c.loop_instructions} instr, "
                         f"{c.loop_instructions / c.codes_per_thread:.2f}/code/thread")
            if c.local_memory:
                extra += f" spills={c.local_memory} LDL/STL"
            print(f"ok   {c.kernel} m{m} {_short(launch)} {c.seconds:.1f}s "
                  f"smem={c.shared_bytes}{extra}")
    return failed


def _short(cfg: dict[str, Any]) -> str:
    return ",".join(f"{k.lower().replace('block_', 'b')}={v}" for k, v in cfg.items())


if __name__ == "__main__":
    from qcompiler.fast_exit import run_and_exit

    run_and_exit(main)
