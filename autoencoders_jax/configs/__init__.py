"""Autoencoder experiment configs."""
