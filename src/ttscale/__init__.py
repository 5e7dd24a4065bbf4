"""ttscale: spend inference compute where it pays most.

The public API, importable from the top level (loaded lazily, so `import ttscale` is cheap)::

    from ttscale import get_task, load_generator, get_scorer, solve, evaluate
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "get_task": "ttscale.tasks",
    "load_generator": "ttscale.engine",
    "get_scorer": "ttscale.rewards",
    "solve": "ttscale.strategies",
    "solve_many": "ttscale.strategies",
    "get_params": "ttscale.strategies",
    "evaluate": "ttscale.eval.evaluate",
    "evaluate_grid": "ttscale.eval.api",
    "check_family": "ttscale.eval.calibration",
    "list_models": "ttscale.models.registry",
    "select_rules": "ttscale.eval.select",
    "Problem": "ttscale.types",
    "SamplingParams": "ttscale.types",
    "GenerationRequest": "ttscale.types",
    "Cost": "ttscale.types",
    "TTScaleError": "ttscale.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ttscale' has no attribute {name!r}")
