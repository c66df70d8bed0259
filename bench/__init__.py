"""Benchmark harness: one isolated process per (model, variant, backend) cell."""
