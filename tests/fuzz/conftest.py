"""The fuzz helpers (fuzz_targets.py, mutator.py) are plain modules beside the tests, shared
with the stand-alone runner (run_fuzz.py, which finds them on its own sys.path). Under
pytest's importlib mode a test cannot import a sibling, so this registers both by name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent
CORPUS_DIR = HERE / "corpus"


def _load(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("fuzz_targets")
_load("mutator")
