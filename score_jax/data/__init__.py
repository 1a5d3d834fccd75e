"""Datasets: tfds builders over local files (MATH, MBPP, HumanEval), prompts, the synthetic task.

Import the submodule you need (`from score_jax.data import synthetic`); the tfds
builders import tensorflow-datasets, which takes a moment.
"""
