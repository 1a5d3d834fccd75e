"""Verifiers: 0/1 rewards for math answers and sandboxed code."""
