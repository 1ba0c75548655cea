"""The benchmark's optional dependencies, imported only where they are used.

``import convnext_fast.bench`` and ``python -m convnext_fast.bench --help`` need torch alone; timm
(the reference models) and matplotlib (the plots) are imported by the code that uses them, through
:func:`require`, which names the install command when one is missing.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["INSTALL_HINT", "MissingDependency", "require", "missing"]

INSTALL_HINT = "pip install -e .[bench]"


class MissingDependency(ImportError):
    """An optional benchmark dependency is not installed; the message says which and how to get it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency`.

    Args:
        module: the module to import, e.g. ``"timm.models.convnext"``.
        purpose: what needs it, for the message, e.g. ``"the convnext_tiny baseline"``.

    Returns:
        The imported module.

    Raises:
        MissingDependency: the module (or its top-level package) is not installed or fails to import.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependency(f"{top} is needed for {purpose} but is not installed ({exc}); "
                                f"install the benchmark extras: {INSTALL_HINT}") from exc


def missing(module: str) -> bool:
    """True when ``module`` cannot be imported (a note for the report, never an error)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False
