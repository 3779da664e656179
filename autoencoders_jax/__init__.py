"""Convolutional autoencoders on the shared core (common_jax)."""
