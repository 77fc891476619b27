"""``python -m pipeline.benchmarks.preflight [--no-cuda]``: what ``make bench-gpu`` needs, checked
before it starts (on a lent GPU machine a missing package would otherwise end an unattended run
minutes in): every package the benchmark imports, and a CUDA device torch can use.

Exit status 0 when all is there (one line says which interpreter, torch and device), 1 with a
message naming what is missing and how to carry it (README, "Speed and many GPUs").
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# import names (PyYAML is ``yaml``, scikit-learn ``sklearn``)
MODULES = ("torch", "monai", "nibabel", "pydicom", "yaml", "tqdm", "scipy", "sklearn", "pandas")
CARRY_HINT = (
    "carry them as wheels: `make gpu-wheels` here, then on the GPU machine `python3 -m pip install --no-index "
    '--find-links .cache/gpu-wheels monai nibabel pydicom pyyaml tqdm` (README, "Speed and many GPUs")'
)


def missing(modules: Sequence[str] = MODULES) -> list[str]:
    """The modules that cannot be imported, each with the reason."""
    problems = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken install (ImportError, or an error while importing) counts too
            problems.append(f"{name} ({type(exc).__name__}: {exc})")
    return problems


def check(need_cuda: bool = True, modules: Sequence[str] = MODULES) -> list[str]:
    """Every problem found: modules that do not import, and no CUDA device when ``need_cuda``."""
    problems = missing(modules)
    if problems:
        return [f"{sys.executable} cannot import: " + "; ".join(problems) + f". {CARRY_HINT}"]
    import torch

    if need_cuda and not torch.cuda.is_available():
        return [f"torch {torch.__version__} ({sys.executable}) sees no CUDA device"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    problems = check(need_cuda="--no-cuda" not in args)
    if problems:
        for problem in problems:
            print(f"bench-gpu preflight: {problem}", file=sys.stderr)
        return 1
    import torch

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(
        f"bench-gpu preflight: {sys.executable}, torch {torch.__version__}, {where}: all of {', '.join(MODULES)} import"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
