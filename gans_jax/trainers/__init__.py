"""GAN training: state, pure train steps and `train_and_evaluate` per model family."""
