"""Autoencoder training."""
