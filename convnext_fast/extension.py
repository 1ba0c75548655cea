"""The compiled extension (``convnext_fast._C``) as the ``cuda`` and ``cpu`` backends.

Loaded lazily: importing convnext_fast never imports it.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def unavailable_reason(device_type: str) -> str:
    """'' when the extension can run ops on ``device_type`` tensors, else why not."""
    return "the compiled extension convnext_fast._C is not part of this build yet"
