"""GAN network definitions (pure Flax Linen modules; no training code)."""
