"""GANs in JAX/Flax: models, train steps and configs, built on `common_jax`."""
