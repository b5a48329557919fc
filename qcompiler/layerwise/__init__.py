"""Layer-wise calibrated compiles of streamed checkpoints (docs/LAYERWISE.md).

`run_layerwise` runs a pipeline whose calibrated passes (gptq, clip, pot-refine) work one decoder
layer at a time; the driver routes streamed compiles with such passes here.
"""

from qcompiler.layerwise.runner import run_layerwise, split_pipeline, wants_layerwise

__all__ = ["run_layerwise", "split_pipeline", "wants_layerwise"]
