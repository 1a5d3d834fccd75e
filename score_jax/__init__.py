"""score_jax: SCoRe (self-correction via multi-turn RL) for Gemma-style models in JAX."""
