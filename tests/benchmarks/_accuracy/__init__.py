"""Helpers of ``tests/benchmarks/accuracy_demo.py``: the pipeline's accuracy against the truth.

``core`` (pure functions), ``truth`` (the truth tables), ``visits`` (figures 1-3),
``coadd`` (figure 4), ``cells`` (figure 5) and ``common`` (shared by the last two).
"""
