"""A GRPO run's parts and its loop: one step, ``train()``, checkpoints, evaluation, the base model."""
