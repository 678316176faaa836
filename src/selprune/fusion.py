"""torch.compile for the few element-wise reductions that would otherwise cost extra passes over memory.

Both hot reductions (the statistics' moment sums and the evaluation's rank counts) are memory-bound:
eager PyTorch reads the activations or logits once per operation, a compiled kernel reads them once.
"""

from __future__ import annotations

import warnings

import torch


class Fused:
    """A function compiled on first use; eager, after one warning, where torch.compile cannot build it."""

    def __init__(self, fn, what: str):
        self.fn, self.what = fn, what
        self.compiled = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as exc:  # compilation problems (no C++ compiler, no triton) surface on first call
            warnings.warn(f"torch.compile of {self.what} failed ({type(exc).__name__}: {exc}); "
                          "running it uncompiled")
            self.failed = True
            return self.fn(*args)
