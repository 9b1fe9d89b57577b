"""Benchmarks: one Lightning harness (:mod:`.harness`) and one module per benchmark."""
