"""Package discovery for the three source roots (metadata lives in pyproject.toml).

The repository keeps the user-requested top-level folders `qcompiler/`, `passes/` and `codegen/`,
while the installed package is one namespace: `passes/` installs as `qcompiler.passes` and
`codegen/` as `qcompiler.codegen`. pyproject.toml cannot express "find the packages under each
of these roots and rename them", so this file asks setuptools to find them: a new sub-package
(say `qcompiler/ir/`) is packaged without anyone listing it.
"""

from setuptools import find_packages, setup

ROOTS = {"qcompiler": "qcompiler", "qcompiler.passes": "passes", "qcompiler.codegen": "codegen"}


def discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            if not any(sub.startswith(f"{p}.") or sub == p
                       for p in ("passes", "codegen") if name == "qcompiler"):
                packages.append(f"{name}.{sub}")
                package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


PACKAGES, PACKAGE_DIR = discover()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
