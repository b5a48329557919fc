"""The `qc` dialect: op definitions (defs.py, in the vocabulary of spec.py), their reference
implementations (impls.py) and their torch.library registration and checks (registry.py).
Import the submodules; this package file imports nothing so that it adds no dependencies."""
