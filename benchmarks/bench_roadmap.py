"""The paper's road from ResNet-50 to ConvNeXt-T in throughput (``convnext_fast.bench.roadmap``).

Every step of Figure 2 timed in inference and a training step: eager PyTorch (the reference
backend), ours (``auto``), ``optimize_for_inference`` where it applies, and ``torch.compile`` of
both for ResNet-50, the kernel-7 step and the final step.

Run: ``python benchmarks/bench_roadmap.py --out DIR [--budget-s 600] [--steps resnet50,k7] [--providers eager,ours]``
"""
import sys

from convnext_fast.bench.roadmap import main

if __name__ == "__main__":
    sys.exit(main())
