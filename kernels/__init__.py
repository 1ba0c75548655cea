"""Triton kernels and their host launchers.

Importing this package imports nothing (Triton is imported by the kernel modules themselves, on
first use). ``launchers`` gathers the launchers each op's route calls; ``layout`` holds the
allocation rules that every backend and every fake implementation share.
"""
