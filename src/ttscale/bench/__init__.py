"""Benchmarks behind `ttscale bench`: `engine` (the torch engine against transformers, and its
long-chain workloads) and `serve` (concurrent clients against `ttscale serve` on loopback)."""
