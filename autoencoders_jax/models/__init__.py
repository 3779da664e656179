"""Autoencoder networks."""
