"""The Triton backend's launchers, one import away (``backend.implementation("triton")``).

Contract (every backend module provides the same functions): see ``kernels/layout.py``
for the allocation rules and each op module (``convnext_fast/depthwise_conv.py`` ...) for the
signatures.
"""
from .block import block_forward
from .depthwise_conv import dwconv_backward, dwconv_forward
from .dwconv_layer_norm import dwconv_ln_backward, dwconv_ln_forward
from .layer_norm import layer_norm_backward, layer_norm_forward
from .patch_linear import patch_linear_forward
from .pointwise_mlp import mlp_backward, mlp_forward

__all__ = [
    "dwconv_forward",
    "dwconv_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "dwconv_ln_forward",
    "dwconv_ln_backward",
    "mlp_forward",
    "mlp_backward",
    "block_forward",
    "patch_linear_forward",
]
