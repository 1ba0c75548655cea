"""Triton kernels and their host launchers (installed as ``convnext_fast.kernels``).

Launcher contract: see ``convnext_fast/ops.py``.
"""
from .depthwise_conv import dwconv_backward, dwconv_forward
from .dwconv_layer_norm import dwconv_ln_backward, dwconv_ln_forward
from .layer_norm import layer_norm_backward, layer_norm_forward

__all__ = [
    "dwconv_forward",
    "dwconv_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "dwconv_ln_forward",
    "dwconv_ln_backward",
]
