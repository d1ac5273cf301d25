"""Benchmark scripts; importable so notebooks and tests reuse their pieces."""
