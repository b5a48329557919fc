# emit_all: one file per unique (format, N, K, group), and index.json mapping layers to files.
# Run by emit.test (the four emit-*.py scripts share one process); by hand:
# python emit-all.py OUTDIR | filecheck emit-all.py
import json
import sys
from pathlib import Path

from qcompiler.codegen.emit import emit_all

out = Path(sys.argv[1])
specs = [{"format": "razer4", "N": 4096, "K": 4096, "group_size": 128,
          "layer": f"model.layers.{i}.{p}"}
         for i in range(2) for p in ("self_attn.q_proj", "self_attn.o_proj")]
specs.append({"format": "razer4", "N": 11008, "K": 4096, "group_size": 128,
              "layer": "model.layers.0.mlp.up_proj"})
index = emit_all(specs, out)
for path in sorted(out.iterdir()):
    print("file", path.name)
print(json.dumps(index["layers"], indent=0, sort_keys=True))
# CHECK: file index.json
# CHECK-NEXT: file qc_razer4_n11008_k4096_g128.py
# CHECK-NEXT: file qc_razer4_n4096_k4096_g128.py
# CHECK: "model.layers.0.mlp.up_proj": "qc_razer4_n11008_k4096_g128.py",
# CHECK-NEXT: "model.layers.0.self_attn.o_proj": "qc_razer4_n4096_k4096_g128.py",
# CHECK-NEXT: "model.layers.0.self_attn.q_proj": "qc_razer4_n4096_k4096_g128.py",
# CHECK-NEXT: "model.layers.1.self_attn.o_proj": "qc_razer4_n4096_k4096_g128.py",
# CHECK-NEXT: "model.layers.1.self_attn.q_proj": "qc_razer4_n4096_k4096_g128.py"
