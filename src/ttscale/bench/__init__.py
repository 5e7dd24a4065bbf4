"""Benchmarks behind `ttscale bench`: `engine` (the torch engine against transformers, and its
long-chain workloads)."""
