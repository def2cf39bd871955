"""Test-wide setup: 8 simulated CPU devices so meshes, sharding and ring attention are exercised."""

import os

from lr_jax.cpu_mode import simulate_devices

# Must happen before JAX initialises its backends (i.e. before any test module imports jax).
simulate_devices(8)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
