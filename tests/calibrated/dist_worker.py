"""One rank of the distributed-calibration tests (test_distributed.py), started by
`qcompiler.launch.launch(2, [SCENARIO, ROOT], module="dist_worker")`, or called in the test's own
process as the one-process reference (`compile_all`).

Scenarios: `compile` runs every pipeline of PIPELINES into ROOT/<name>-0, and those of TWICE a
second time into ROOT/<name>-1 (same process count, same bytes?); `nan` gives rank 1 a calibration batch with NaN in it, so that
rank fails and rank 0 must stop quietly without writing ROOT/nan.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from calib_helpers import Mixed

PIPELINES = {
    "gptq": "gptq{format=int4,group-size=32},lower-datatype{format=int4,group-size=32}",
    "clip": "clip{format=int4,group-size=32},lower-datatype{format=int4,group-size=32}",
    "awq": "awq{format=int4,group-size=32,grid=5},lower-datatype{format=int4,group-size=32}",
    "pot": ("pot-refine{format=pot4,group-size=32,steps=10},"
            "lower-datatype{format=pot4,group-size=32}"),
}
TWICE = ("gptq",)  # Hessians summed across ranks; the others match one process bit for bit
BATCHES, TOKENS = 5, 500  # 2500 rows per linear input: above clip's and awq's 2048-row sample


def batches(nan_at: int | None = None, seed: int = 11) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(1, TOKENS, 32, generator=g) for _ in range(BATCHES)]
    if nan_at is not None:
        out[nan_at][0, 3, 5] = float("nan")
    return out


def compile_one(name: str, out: Path, calib: list[torch.Tensor]) -> None:
    import qcompiler
    from qcompiler.calibration import CalibrationConfig

    qcompiler.compile(Mixed().eval(), pipeline=PIPELINES[name], out=out, quiet=True,
                      example_inputs=(torch.zeros(1, 16, 32),),
                      calibration=CalibrationConfig(batches=calib))


def compile_all(root: Path, names: tuple[str, ...] = tuple(PIPELINES), run: int = 0) -> None:
    for name in names:
        compile_one(name, root / f"{name}-{run}", batches())


def main(argv: list[str]) -> int:
    from qcompiler.cli.common import run_main
    from qcompiler.launch import run_rank

    scenario, root = argv[0], Path(argv[1])

    def body(group) -> int:
        assert group is not None and group.world == 2, "run me with launch(2, ...)"
        if scenario == "compile":
            compile_all(root)
            compile_all(root, TWICE, run=1)
        else:
            compile_one("gptq", root / "nan", batches(nan_at=1))  # batch 1: rank 1's share
        return 0

    return run_main(lambda: run_rank(body))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
