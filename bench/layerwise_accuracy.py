"""Which inputs a layer-wise compile should calibrate each layer on: fp or already-quantized.

    python bench/layerwise_accuracy.py            # stories260k, 3 calibration seeds

A layer-wise compile (docs/LAYERWISE.md) collects each decoder layer's statistics from the
activations entering it: the fp model's (`sequential=False`) or those computed through the
already-quantized earlier layers (`sequential=True`, GPTQ's and llm-compressor's sequential
mode). This runs both on stories260k (the bundled real pretrained tiny Llama) with
fold-norms, rotate, GPTQ int4 g32 (`on-indivisible=skip`: its down_proj K=172 stays fp in both),
on the same calibration sequences (16 x 128 sampled from the fp model, seeds 0, 1, 2), and
compares each artifact with the fp model by `qcompiler.evaluate` (KL and top-1 on 8 x 128
sampled sequences, held-out seeds). Results: bench/results/layerwise_accuracy.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "layerwise_accuracy.md"
SPEC = ("canonicalize,dce,fold-norms,rotate,gptq{format=int4,group-size=32},"
        "lower-datatype{format=int4,group-size=32,on-indivisible=skip},dce")
SEEDS, SAMPLES, SEQLEN = (0, 1, 2), 16, 128


def main() -> int:
    import torch

    import qcompiler
    from qcompiler import evaluate, zoo
    from qcompiler.calibration import CalibrationConfig
    from qcompiler.capture import capture
    from qcompiler.sampling import release, sample_sequence

    directory = zoo.DATA_DIR / "stories260k"
    reference = capture(str(directory))
    vocab = int(reference.meta["config"]["vocab_size"])
    rows = []
    for seed in SEEDS:
        batches = [sample_sequence(reference, vocab, SEQLEN, seed * 1000 + i, 1)
                   for i in range(SAMPLES)]
        release(reference)
        for sequential in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                qcompiler.compile(directory, pipeline=SPEC, out=Path(tmp) / "a", quiet=True,
                                  layerwise=True, sequential=sequential,
                                  calibration=CalibrationConfig(batches=batches))
                seconds = time.perf_counter() - t0
                result = evaluate.evaluate(qcompiler.load(Path(tmp) / "a"), reference,
                                           kind="causal-lm", vocab_size=vocab, samples=8,
                                           seq_len=128, seed=0, bos_token_id=1)
                release(reference)
            rows.append({"seed": seed, "sequential": sequential, "kl_mean": result.kl_mean,
                         "top1": result.top1_agreement, "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.write_text(render(rows))
    return 0


def render(rows: list[dict]) -> str:
    import torch
    import transformers

    def stats(sequential: bool, key: str) -> tuple[float, float]:
        values = [r[key] for r in rows if r["sequential"] == sequential]
        return statistics.mean(values), statistics.pstdev(values)

    lines = [
        "# Layer-wise calibration: fp inputs or already-quantized inputs", "",
        f"Command: `python bench/layerwise_accuracy.py` (see its docstring). Pipeline `{SPEC}` "
        f"compiled with `layerwise=True` on stories260k; calibration {SAMPLES} x {SEQLEN} "
        f"sequences sampled from the fp model per seed; evaluation: KL(fp || quantized) and "
        "top-1 agreement on 8 x 128 sequences sampled from the fp model (held-out seeds).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        "| calibration seed | mode | KL mean | top-1 | compile (s) |", "|---|---|---|---|---|",
    ]
    for r in rows:
        mode = "sequential (quantized inputs)" if r["sequential"] else "fp inputs"
        lines.append(f"| {r['seed']} | {mode} | {r['kl_mean']:.5f} | {r['top1']:.4f} "
                     f"| {r['seconds']} |")
    fp_kl, fp_sd = stats(False, "kl_mean")
    sq_kl, sq_sd = stats(True, "kl_mean")
    better = "sequential" if sq_kl < fp_kl else "fp inputs"
    lines += ["", f"Mean KL over the seeds: fp inputs {fp_kl:.5f} (sd {fp_sd:.5f}), sequential "
              f"{sq_kl:.5f} (sd {sq_sd:.5f}): {better} is better by "
              f"{abs(fp_kl - sq_kl) / max(fp_kl, sq_kl) * 100:.1f}% of the larger KL.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
