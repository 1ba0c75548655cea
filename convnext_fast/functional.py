"""The functional API in one namespace (like ``torch.nn.functional``): each op lives in its own
module (``depthwise_conv.py``, ``layer_norm.py``, ``dwconv_ln.py``, ``mlp.py``)."""
from .depthwise_conv import depthwise_conv2d
from .dwconv_ln import dwconv_layer_norm
from .layer_norm import layer_norm_2d
from .mlp import pointwise_mlp
from .route import MAX_KERNEL_SIZE

__all__ = ["depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "pointwise_mlp", "MAX_KERNEL_SIZE"]
