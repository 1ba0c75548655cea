"""CUDA-graph replay of an inference model's forward, for small batches.

At batch 1-16 a ConvNeXt forward on a GPU is host-bound: each of its few dozen kernel launches
costs microseconds of Python and driver time, more than the kernel itself runs. A CUDA graph
records the launches once and replays them with one call. :class:`GraphedForward` does that for
``optimize_for_inference(model, cuda_graph=True)``: one graph per input signature, captured on
first use.

The alternative that needs no option is ``torch.compile(optimized, mode="reduce-overhead")``,
which captures Inductor's graph the same way (our registered ops are capturable); compose one or
the other, not both.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch import Tensor

from . import backend

__all__ = ["GraphedForward"]


class GraphedForward:
    """Calls ``forward(x)`` by replaying a CUDA graph captured for ``x``'s signature.

    The first call with a new signature (shape, strides, dtype, device, the requested backend and
    the autocast state) runs ``forward`` ``warmup`` times on a side stream (Triton compiles its
    kernels there), captures one more call into a CUDA graph with a static input buffer, and
    replays it. Later calls with that signature copy the input into the static buffer, replay, and
    return a new tensor holding the output (the graph's own output buffer is overwritten by the
    next replay). All graphs share one memory pool.

    Args:
        forward: the inference forward, one CUDA tensor in, one tensor out; nothing it does may
            synchronize with the host (our ops do not).
        warmup: eager calls before each capture.
        max_graphs: signatures kept at most; one more raises (each graph holds its activations'
            memory; feed a fixed set of batch shapes).

    Raises (on call):
        ValueError: ``x`` is not a CUDA tensor, or extra arguments are given.
        RuntimeError: ``x`` requires grad under grad mode (inference only), or ``max_graphs``
            signatures are already captured.
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], *, warmup: int = 2, max_graphs: int = 8) -> None:
        if warmup < 1:
            raise ValueError(f"GraphedForward needs warmup >= 1 (Triton compiles on the first call), got {warmup}")
        self.forward = forward
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: dict[Hashable, tuple[Tensor, torch.cuda.CUDAGraph, Tensor]] = {}
        self._pool = None

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        if args or kwargs:
            raise ValueError("a CUDA-graphed forward takes one input tensor only")
        if not isinstance(x, Tensor) or x.device.type != "cuda":
            where = x.device if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"a CUDA-graphed forward takes a CUDA tensor, got {where}; build the model with "
                             "cuda_graph=False to run it elsewhere")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("a CUDA-graphed inference model does not support backward; pass an input that "
                               "does not require grad, or use the original model")
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, backend.get_backend(),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x, key)
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    @property
    def captured(self) -> int:
        """How many input signatures have a graph."""
        return len(self._graphs)

    def _capture(self, x: Tensor, key: Hashable) -> tuple[Tensor, torch.cuda.CUDAGraph, Tensor]:
        if len(self._graphs) >= self.max_graphs:
            raise RuntimeError(f"this CUDA-graphed model has captured {len(self._graphs)} input signatures "
                               f"(max_graphs={self.max_graphs}); feed a fixed set of batch shapes")
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.forward(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
            static_out = self.forward(static_in)
        if not isinstance(static_out, Tensor):
            raise TypeError(f"a CUDA-graphed forward must return one tensor, got {type(static_out).__name__}")
        self._graphs[key] = (static_in, graph, static_out)
        return self._graphs[key]
