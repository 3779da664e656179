"""CNN classifiers in JAX/Flax (MNIST, Fashion-MNIST, CIFAR-10/100), built on `common_jax`.

The package shares the data pipelines, parallel steps, checkpoints and loop of `common_jax`;
its models and trainers follow the same layout as `gans_jax`:
  models/cnn.py           BasicCNN (the seeds' network), CNN (compact, batch norm), FastCIFARNet
  trainers/classifier.py  ClassifierState, train_step, eval_step, make_task, train_and_evaluate
  configs/                one file per experiment, each with `basic` and `smoke` variants
"""
