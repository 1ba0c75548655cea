"""The compiled extension's C++ / CUDA sources, shipped as package data.

``convnext_fast.build`` finds them here (``importlib.resources``) and compiles them on first use;
nothing in this package is Python code to import.
"""
