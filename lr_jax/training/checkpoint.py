"""Orbax checkpointing: async saves, keep-N, resume from the latest step, save on SIGTERM (preemption).

A checkpoint holds the train state (params, optimizer state, step — sharded arrays, restored straight into
their shardings) and the data iterator's state as JSON, so a resumed run sees exactly the batches an
uninterrupted run would have. Directories may be local or `gs://`.

On `gs://`, orbax writes its metadata files through etils.epath and the array data through tensorstore's
own GCS driver. epath sends `gs://` to TensorFlow's filesystem whenever TensorFlow is importable; we route it
to fsspec/gcsfs instead (`EPATH_USE_TF=false`): TensorFlow is no dependency of lr_jax and gcsfs uses the same
application-default credentials as tensorstore and google-cloud-storage.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lr_jax.errors import ConfigError


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the two items this trainer saves."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True) -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        if directory.startswith("gs://"):
            _prepare_gcs(directory)
        elif "://" not in directory:  # orbax's tensorstore layer refuses relative local paths
            directory = os.path.abspath(directory)
        self.directory = directory
        # Handlers registered up front (not inferred from the first save/restore's args), so a checkpoint's
        # metadata can be read before any restore (`restore` checks the tree and shapes with it).
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, save, restore, handler in (
                ("state", ocp.args.StandardSave, ocp.args.StandardRestore, ocp.StandardCheckpointHandler),
                ("data", ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)):
            registry.add(item, save, handler)
            registry.add(item, restore, handler)
        self._mngr = ocp.CheckpointManager(directory, options=options, handler_registry=registry)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None, *, force: bool = False) -> bool:
        """Start a (possibly async) save of `state` and the iterator state at `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        return self._mngr.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore into the shardings/dtypes of `abstract_state` (ShapeDtypeStructs with sharding).

        The checkpoint's tree and shapes are compared with `abstract_state` from its metadata first: a
        checkpoint of another model is refused, naming the first differing array, before any read starts.
        (Restoring it anyway failed inside orbax's event loop with reads still in flight, whose callbacks
        then printed dozens of "Event loop is closed" tracebacks after the error line.)
        """
        self._check_fits(step, abstract_state)
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except (ValueError, TypeError, KeyError) as e:
            # orbax reports a tree or shape that differs from this config's state deep inside tensorstore.
            why = " ".join(str(e).split())
            why = why.split(". Truncating")[0] if "Truncating" in why else why[:300]
            raise ConfigError(self._misfit(step, why)) from None
        return out["state"], dict(out["data"] or {})

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        stored = self._mngr.item_metadata(step)["state"]
        if stored is None:  # no metadata (an unusual writer): let the restore itself decide
            return
        have = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
        want = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        problem = None
        if set(have) != set(want):
            extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
            problem = (f"arrays only in the checkpoint: {', '.join(extra[:3]) or 'none'}; only in this "
                       f"config: {', '.join(missing[:3]) or 'none'}")
        else:
            for name, w in sorted(want.items(), key=lambda kv: not kv[0].startswith("params")):
                h = have[name]
                if tuple(h.shape) != tuple(w.shape) or jax.numpy.dtype(h.dtype) != jax.numpy.dtype(w.dtype):
                    problem = (f"{name} is {h.dtype}{list(h.shape)} in the checkpoint, "
                               f"{w.dtype}{list(w.shape)} in this config")
                    break
        if problem:
            raise ConfigError(self._misfit(step, problem))

    def _misfit(self, step: int, why: str) -> str:
        return (f"{self.directory}: checkpoint step {step} does not fit this config's model / optimizer "
                f"({why}); it was written by another config: resume with that config, or start a new run "
                "in another train.out_dir / train.checkpoint_dir")

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def _prepare_gcs(directory: str) -> None:
    """Make etils.epath (orbax's file layer) use fsspec/gcsfs for `gs://`, not TensorFlow's filesystem, and
    check that the bucket exists.

    An explicit `EPATH_USE_TF` in the environment wins. etils (checked on 1.15.0) reads the variable once, on
    the first path it resolves of any scheme, and caches the answer in the private `_is_tf_installed`: clear
    that cache so a TFDS/epath call made earlier in the process cannot pin gs:// to TensorFlow.
    """
    os.environ.setdefault("EPATH_USE_TF", "false")
    from etils.epath import gpath

    cached_check = getattr(gpath, "_is_tf_installed", None)
    if cached_check is not None and hasattr(cached_check, "cache_clear"):
        cached_check.cache_clear()
    if importlib.util.find_spec("gcsfs") is None:
        raise ConfigError(f"train.checkpoint_dir={directory}: gs:// checkpoints need the gcsfs package "
                          "(pip install gcsfs)")
    # A missing bucket would otherwise surface only at the first save, after the reference pass and a step,
    # as tracebacks from orbax's writer threads. One probe object, written and deleted: the checkpoints need
    # that permission anyway (a missing bucket, no write access, no credentials: one line).
    from lr_jax.io import storage

    try:
        storage.probe_write(directory)
    except storage.StorageError as e:
        raise ConfigError(f"train.checkpoint_dir={directory}: {str(e).removeprefix(directory + ': ')}"
                          ) from None


def _path(keys: tuple[Any, ...]) -> str:
    """"opt_state.1.0.mu.embed" for a tree path (dict keys, attributes of namedtuples and list indices alike:
    orbax's metadata has dicts and lists where the state has optax's namedtuples)."""
    parts = []
    for k in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring a tree of jax arrays, for `Checkpointer.restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
