"""Decode plans come from the format registry: the right family and constants per format."""

from __future__ import annotations

import pytest

from qcompiler import formats
from qcompiler.codegen.decode_plan import DecodeFamily, ScaleKind, normalize_opts, plan_for
from qcompiler.errors import QCompilerError


def params(fmt: str) -> dict:
    return dict(plan_for(fmt).params)


@pytest.mark.parametrize("fmt,family", [
    ("fp4", DecodeFamily.MINIFLOAT), ("razer4", DecodeFamily.MINIFLOAT),
    ("mxfp4", DecodeFamily.MINIFLOAT), ("nvfp4", DecodeFamily.MINIFLOAT),
    ("nvfp4-razer", DecodeFamily.MINIFLOAT), ("fp8-e4m3", DecodeFamily.MINIFLOAT),
    ("int4", DecodeFamily.INT), ("int3", DecodeFamily.INT), ("int2", DecodeFamily.INT),
    ("int4-sym", DecodeFamily.INT), ("int8", DecodeFamily.INT),
    ("pot4", DecodeFamily.POT), ("pot3", DecodeFamily.POT), ("pot2", DecodeFamily.POT),
    ("nf4", DecodeFamily.TABLE), ("dint4", DecodeFamily.TABLE),
])
def test_family(fmt: str, family: DecodeFamily) -> None:
    assert plan_for(fmt).family is family


def test_every_weight_format_has_a_plan() -> None:
    for name in formats.names():
        if formats.get(name).role in ("weight", "both"):
            plan = plan_for(name)
            assert plan.bits == formats.get(name).bits


def test_e2m1_bit_placement_and_razer_specials() -> None:
    p = params("razer4")
    assert (p["EXP_BITS"], p["MAN_BITS"], p["SIGNED"], p["UNBIAS"]) == (2, 1, True, 2.0 ** 14)
    assert p["SPECIAL_CODE"] == 8
    assert [p[f"SPECIAL_{i}"] for i in range(4)] == [5.0, -5.0, 8.0, -8.0]
    assert params("fp4")["SPECIAL_CODE"] == -1
    assert plan_for("razer4").has_meta and not plan_for("fp4").has_meta


def test_custom_specials_come_from_the_options() -> None:
    p = dict(plan_for("razer4", {"specials": [3.0, -3.0]}).params)
    assert [p[f"SPECIAL_{i}"] for i in range(4)] == [3.0, -3.0, -3.0, -3.0]
    as_json = plan_for("razer4", '{"specials":[3.0,-3.0]}')
    assert as_json == plan_for("razer4", {"specials": [3, -3]})


def test_scales() -> None:
    assert plan_for("mxfp4").scale is ScaleKind.E8M0
    nv = plan_for("nvfp4")
    assert nv.scale is ScaleKind.MINIFLOAT and nv.has_global_scale
    assert dict(nv.scale_params) == {"EXP_BITS": 4, "MAN_BITS": 3, "SIGNED": True, "UNBIAS": 256.0}
    e3m3 = dict(plan_for("nvfp4-razer").scale_params)
    assert (e3m3["EXP_BITS"], e3m3["MAN_BITS"], e3m3["SIGNED"]) == (3, 3, False)
    assert plan_for("razer4").scale is ScaleKind.FLOAT


def test_integers() -> None:
    assert params("int4") == {"XOR": 0, "OFFSET": 0, "HAS_ZERO": True}
    assert params("int4-sym") == {"XOR": 0, "OFFSET": 8, "HAS_ZERO": False}  # code = q + 8
    assert params("int8") == {"XOR": 128, "OFFSET": 128, "HAS_ZERO": False}  # two's complement


def test_pot_and_tables() -> None:
    assert params("pot4") == {"MAG_BITS": 3, "E0": 0}
    assert params("pot2") == {"MAG_BITS": 1, "E0": 0}
    dint = params("dint4")
    assert dint["SIGN_BIT"] == 3 and [dint[f"V{i}"] for i in range(8)] == [0, .5, 1, 2, 3, 4, 5, 6]
    nf4 = params("nf4")
    assert nf4["SIGN_BIT"] == -1 and nf4["V0"] == -1.0 and nf4["V7"] == 0.0 and nf4["V15"] == 1.0


def test_packing_units() -> None:
    assert (plan_for("int3").elems_per_unit, plan_for("int3").unit_bytes) == (8, 3)
    assert (plan_for("int2").elems_per_unit, plan_for("int2").unit_bytes) == (4, 1)
    assert (plan_for("razer4").elems_per_unit, plan_for("razer4").unit_bytes) == (2, 1)


def test_errors() -> None:
    with pytest.raises(QCompilerError, match="activation format"):
        plan_for("razer4-kv")
    with pytest.raises(QCompilerError, match="unknown format 'razer5'"):
        plan_for("razer5")
    with pytest.raises(QCompilerError, match="not valid JSON"):
        normalize_opts("{oops")
