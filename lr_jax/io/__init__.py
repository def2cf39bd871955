"""File I/O shared by trainer and judge: `storage` (local + gs://) and `records` (the preference schema).

No JAX in this package: `judge` imports it, and `judge` must never pull JAX in. TensorFlow is imported lazily,
only when TFRecords are written or read.
"""

from lr_jax.io import records, storage

__all__ = ["records", "storage"]
