"""convnext_fast: fused Triton / CUDA / C++ kernels for ConvNeXt's depthwise convolution and
channels-first LayerNorm, behind drop-in modules and the ConvNeXt model family.

Liu et al., "A ConvNet for the 2020s", CVPR 2022; Woo et al., "ConvNeXt V2", CVPR 2023.

Importing this package never touches the GPU and needs neither Triton nor the compiled extension.
"""
from .backend import BackendUnavailableError, available_backends, get_backend, set_backend, use_backend
from .convert import convert, to_reference
from .inference import optimize_for_inference
from .depthwise_conv import depthwise_conv2d
from .dwconv_ln import dwconv_layer_norm
from .layer_norm import layer_norm_2d
from .layers import DepthwiseConv2d, LayerNorm2d
from .mlp import pointwise_mlp
from .models import (
    ConvNeXt,
    ConvNeXtBlock,
    GlobalResponseNorm,
    convnext_atto,
    convnext_base,
    convnext_femto,
    convnext_large,
    convnext_nano,
    convnext_pico,
    convnext_small,
    convnext_tiny,
    convnext_xlarge,
    convnextv2_atto,
    convnextv2_base,
    convnextv2_femto,
    convnextv2_huge,
    convnextv2_large,
    convnextv2_nano,
    convnextv2_pico,
    convnextv2_small,
    convnextv2_tiny,
    create_model,
    list_models,
)
from .weights import CheckpointError, convert_state_dict, load_weights

__version__ = "0.2.0"

__all__ = [
    "BackendUnavailableError", "CheckpointError", "ConvNeXt", "ConvNeXtBlock", "DepthwiseConv2d",
    "GlobalResponseNorm", "LayerNorm2d", "available_backends", "convert", "convert_state_dict",
    "create_model", "depthwise_conv2d", "dwconv_layer_norm", "get_backend", "layer_norm_2d",
    "list_models", "load_weights", "optimize_for_inference", "pointwise_mlp", "set_backend", "to_reference", "use_backend",
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
    "convnext_base", "convnext_large", "convnext_xlarge", "convnextv2_atto", "convnextv2_femto",
    "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny", "convnextv2_small", "convnextv2_base",
    "convnextv2_large", "convnextv2_huge",
]
