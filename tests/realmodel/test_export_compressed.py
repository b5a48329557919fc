"""`qcompile export --to compressed-tensors`: transformers loads the directory on CPU and gets
the artifact's logits; the packing is compressed-tensors' own; other formats are refused."""

from __future__ import annotations

import json

import pytest
import torch

import qcompiler
from qcompiler.cli import export_cmd, qcompile
from qcompiler.export_compressed import pack_int4

ct = pytest.importorskip("compressed_tensors", reason="needs compressed-tensors (test extra)")

CASES = {
    "int4": "canonicalize,dce,lower-datatype{format=int4,group-size=32},dce",
    # rotation and norm folding live in the weights: the export must carry them over
    "int4-sym": ("canonicalize,dce,fold-norms,rotate,"
                 "lower-datatype{format=int4-sym,group-size=64},dce"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    fmt = request.param
    root = tmp_path_factory.mktemp(f"export-{fmt}")
    qcompiler.compile("zoo:llama-tiny", pipeline=CASES[fmt], out=root / "art", quiet=True)
    assert qcompile.main(["export", str(root / "art"), "--to", "compressed-tensors",
                          "-o", str(root / "ct"), "-q"]) == 0
    return fmt, root / "art", root / "ct"


def test_transformers_loads_the_export_with_the_same_logits(exported):
    import transformers

    fmt, art, ct_dir = exported
    config = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert config["quant_method"] == "compressed-tensors" and config["ignore"] == ["lm_head"]
    assert weights["symmetric"] == (fmt == "int4-sym")
    assert weights["group_size"] == (32 if fmt == "int4" else 64)
    # transformers 5.24 + compressed-tensors 0.20 cannot keep asymmetric pack-quantized weights
    # compressed (its meta-device init leaves the zero point unpacked, a size mismatch), so the
    # int4 case loads through its dequantizing route; int4-sym loads compressed.
    kwargs = ({"quantization_config": transformers.CompressedTensorsConfig(dequantize=True)}
              if fmt == "int4" else {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(ct_dir, dtype=torch.float32,
                                                           **kwargs).eval()
    ours = qcompiler.load(art)
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = hf(ids).logits, ours(ids)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-3
    if fmt == "int4":  # an existing DIR is replaced only with --force
        argv = [str(art), "--to", "compressed-tensors", "-o", str(ct_dir), "-q"]
        assert export_cmd.main(argv) == 1
        assert export_cmd.main([*argv, "--force"]) == 0


def test_packing_is_compressed_tensors_own():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    values = torch.randint(-8, 8, (24, 80), generator=torch.Generator().manual_seed(1))
    assert torch.equal(pack_int4(values), pack_to_int32(values.to(torch.int8), 4))
    zeros = values[:, :5]  # zero points pack along N (dim 0)
    assert torch.equal(pack_int4(zeros.T).T, pack_to_int32(zeros.to(torch.int8), 4, packed_dim=0))


@pytest.mark.parametrize("pipeline, start", [
    ("canonicalize,lower-datatype{format=nf4}", "error: format nf4 (layer "),
    ("canonicalize,lower-datatype{format=int4},quantize-act{format=fp8-e4m3}",
     "error: the artifact's graph has quantize_act"),
])
def test_inexpressible_artifact_is_a_one_line_error(tmp_path, capsys, pipeline, start):
    qcompiler.compile("zoo:llama-tiny", pipeline=pipeline, out=tmp_path / "art", quiet=True)
    code = export_cmd.main([str(tmp_path / "art"), "--to", "compressed-tensors",
                            "-o", str(tmp_path / "ct")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(start) and "exportable formats: int4, int4-sym, nvfp4" in err[0]
    assert not (tmp_path / "ct").exists()



def test_nvfp4_exports_as_nvfp4_pack_quantized(tmp_path):
    """compressed-tensors' own FP4 unpacking, at fp32, gives our weights; transformers loads
    the directory (its CPU decompression unpacks FP4 to bfloat16, hence the looser logits
    bound: 8-bit mantissas, not a format difference)."""
    import transformers
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from safetensors.torch import load_file

    from qcompiler import ops

    qcompiler.compile("zoo:llama-tiny", format="nvfp4", out=tmp_path / "art", quiet=True)
    assert export_cmd.main([str(tmp_path / "art"), "--to", "compressed-tensors",
                            "-o", str(tmp_path / "ct"), "-q"]) == 0
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "nvfp4-pack-quantized"
    state = load_file(str(tmp_path / "ct" / "model.safetensors"))
    ours = qcompiler.load(tmp_path / "art")
    layer = "model.layers.0.mlp.down_proj"
    node = next(n for n in ours.program.graph.nodes
                if n.op == "call_function" and n.kwargs.get("layer") == layer)
    parts = {p: ours.program.get_tensor(str(a.target))
             for p, a in zip(ops.PARTS, node.args[1:6]) if a is not None}
    want = ops.dequantize_weight("nvfp4", parts, group_size=16, n=128, k=256)
    packed = state[f"{layer}.weight_packed"]
    fp4 = unpack_fp4_from_uint8(packed, 128, 256, dtype=torch.float32)
    scale = state[f"{layer}.weight_scale"].float() / state[f"{layer}.weight_global_scale"]
    got = fp4 * scale.repeat_interleave(16, dim=1)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", dtype=torch.float32,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=True)).eval()
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = hf(ids).logits, ours(ids)
    assert float((a - b).abs().max() / b.abs().max()) <= 1e-2
