"""Benchmarks against PyTorch CPU (scripts; tests import benchmarks.torch_nets)."""
