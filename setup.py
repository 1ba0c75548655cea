"""Build: the pure-Python package always; ``kernels/`` installs as ``convnext_fast.kernels``."""
from setuptools import setup

setup(
    name="convnext_fast",
    version="0.1.0",
    description="Fused Triton/CUDA kernels for ConvNeXt: depthwise conv, channels-first LayerNorm, models",
    packages=["convnext_fast", "convnext_fast.kernels"],
    package_dir={"convnext_fast": "convnext_fast", "convnext_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "timm", "torchvision", "safetensors", "matplotlib"],
    },
)
