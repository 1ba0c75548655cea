"""Benchmarks for convnext_fast: cases, fair timing, roofline arithmetic and the report.

``python -m convnext_fast.bench --out DIR`` runs the report (see :mod:`convnext_fast.bench.report`);
``pytest benchmarks/ --benchmark-only`` runs the same cases under pytest-benchmark. Nothing here is
imported by ``import convnext_fast``.
"""
