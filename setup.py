"""Build: a pure-Python package that ships the kernel sources.

The repository's top level is the package's layout: ``kernels/`` (Triton kernels and launchers) is
installed as ``convnext_fast.kernels`` and ``csrc/`` (the extension's C++ / CUDA sources) as the
package data of ``convnext_fast.csrc``. Neither is ever a top-level import name of its own.

The compiled extension is not built here: it must match the torch it runs with, which pip's build
isolation hides from this script. The first call that needs it compiles it into a cache
(``convnext_fast/build.py``); ``python -m convnext_fast build`` does that ahead of time. So plain
``pip install -e .`` and ``pip install .`` behave the same, with or without build isolation.
"""
from setuptools import find_packages, setup

setup(
    name="convnext_fast",
    version="0.2.0",
    description="Fused Triton / CUDA / C++ kernels for ConvNeXt: depthwise conv, channels-first LayerNorm, MLP, models",
    license="MIT",
    classifiers=["License :: OSI Approved :: MIT License", "Programming Language :: Python :: 3"],
    packages=find_packages(include=["convnext_fast", "convnext_fast.*"]) + ["convnext_fast.kernels",
                                                                             "convnext_fast.csrc"],
    package_dir={"convnext_fast.kernels": "kernels", "convnext_fast.csrc": "csrc"},
    package_data={"convnext_fast": ["*.json", "records/*.json"], "convnext_fast.csrc": ["*.cpp", "*.cu", "*.h"]},
    python_requires=">=3.10",
    # The range tested: torch 2.11 and 2.14 (triton 3.6 and 3.8 with them).
    install_requires=["torch>=2.11,<2.15", "numpy", "ninja"],
    extras_require={
        "triton": ["triton>=3.6,<3.9"],
        "bench": ["timm", "torchvision", "matplotlib", "tqdm", "pytest-benchmark", "onnx", "onnxruntime", "onnxscript",
                  "openvino"],
        "test": ["pytest", "pytest-benchmark", "timm", "torchvision", "safetensors", "matplotlib", "onnx",
                 "onnxruntime", "onnxscript", "scikit-learn"],
    },
)
