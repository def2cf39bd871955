"""Parallelism without model knowledge: `mesh` (the four mesh axes, `make_mesh`), `rules` (logical-axis rules,
`logical_to_spec`, `constrain`, shardings for trees of logical names) and `cpu_mode` (XLA flags of the CPU
test mode). The model names axes logically; this package maps names to mesh axes. Nothing is imported here,
so `lr_jax.parallel.cpu_mode` stays JAX-free (it must run before JAX initialises its backends)."""
