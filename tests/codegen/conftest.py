"""Kernel tests run on the CPU through Triton's interpreter; set it up before triton loads."""

import os
import tempfile

os.environ["TRITON_INTERPRET"] = "1"
# emitted-on-the-fly kernels go to a throwaway cache, not ~/.cache
os.environ.setdefault("QCOMPILER_KERNEL_CACHE", tempfile.mkdtemp(prefix="qc-kernel-cache-"))
os.environ.setdefault("QCOMPILER_AUTOTUNE", "0")
