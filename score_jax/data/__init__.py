"""Datasets: tfds builders over local files, prompts and the synthetic task."""
