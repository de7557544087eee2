"""Operator tools: rollouts, demo collection, conversion, benchmarks."""
