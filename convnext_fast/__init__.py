"""convnext_fast: fused Triton / CUDA / C++ kernels for ConvNeXt's depthwise convolution and
channels-first LayerNorm, behind drop-in modules.

Liu et al., "A ConvNet for the 2020s", CVPR 2022.

Importing this package never touches the GPU and does not need Triton or the compiled extension.
"""
from .backend import BackendUnavailableError, available_backends, get_backend, set_backend, use_backend
from .functional import depthwise_conv2d, dwconv_layer_norm, layer_norm_2d
from .layers import DepthwiseConv2d, LayerNorm2d

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "DepthwiseConv2d",
    "LayerNorm2d",
    "available_backends",
    "depthwise_conv2d",
    "dwconv_layer_norm",
    "get_backend",
    "layer_norm_2d",
    "set_backend",
    "use_backend",
]
