"""lr_jax: the trainer side of LongReward (model, sharding, losses, data, training, sampling)."""

__version__ = "0.1.0"
