"""bench: a plugin-based harness for bias amplification in self-consuming generative loops.

The public API: a plugin and a notebook import from here only. ::

    from harness import Generator, Options, hookimpl      # write a plugin
    import harness; harness.run({...})                    # run the loop from Python

Importing this package stays light (no torch): the names whose modules import torch (``ImageSet``, ``run``,
``load_results``) are loaded on first use.
"""

from __future__ import annotations

__version__ = "0.2.0"

import importlib
from typing import TYPE_CHECKING, Any

from harness.errors import BenchError
from harness.hookspecs import hookimpl
from harness.interfaces import (
    Classifier,
    Dataset,
    DatasetBundle,
    Filter,
    FilterContext,
    Generator,
    Options,
    Runtime,
)
from harness.specs import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    from harness.api import run
    from harness.imageset import ImageSet
    from harness.publish.results import load_results

__all__ = [
    "BenchError",
    "Classifier",
    "Dataset",
    "DatasetBundle",
    "Filter",
    "FilterContext",
    "Generator",
    "ImageSet",
    "Options",
    "RunSpec",
    "Runtime",
    "__version__",
    "hookimpl",
    "load_results",
    "run",
]

#: Public names loaded on first use (PEP 562), so that ``bench --help`` never imports torch.
_LAZY = {
    "ImageSet": "harness.imageset",
    "run": "harness.api",
    "load_results": "harness.publish.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
