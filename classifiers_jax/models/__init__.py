"""Classifier networks (Flax Linen)."""
