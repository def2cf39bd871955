"""A model ready to decode (`Policy`): model dir and config, tokenizer, EOS ids, the mesh, `complete`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lr_jax.convert.flax_dir import TOKENIZER_VOCAB_FILES  # any one makes a dir loadable by AutoTokenizer
from lr_jax.data.errors import DataError
from lr_jax.io import jsonl
from lr_jax.sample.options import SampleError, one_line


def _model_and_tokenizer_dirs(model: str, tokenizer: str | None) -> Path:
    if tokenizer:
        return Path(tokenizer)
    m = Path(model)
    return m / "tokenizer" if (m / "tokenizer").is_dir() else m


def model_config(model_dir: str, **overrides: Any) -> Any:
    """The ModelConfig of `model_dir` (lr_jax or HF dir) from its config file alone: no weights are read."""
    from lr_jax.convert import ConvertError, read_flax_config, read_hf_config

    d = Path(model_dir)
    if not d.is_dir():
        raise SampleError(f"--model {model_dir}: " + ("not a directory" if d.exists() else "does not exist"))
    try:
        if (d / "model_config.json").exists():
            return read_flax_config(d, **overrides)
        if (d / "config.json").exists():
            return read_hf_config(d, **overrides)
    except ConvertError as e:
        raise SampleError(str(e)) from None
    raise SampleError(f"{model_dir}: neither model_config.json (lr_jax) nor config.json (HF) found")


def load_model(model_dir: str, **overrides: Any) -> tuple[Any, Any]:
    """(ModelConfig, params) from an lr_jax dir (model_config.json) or an HF dir (config.json)."""
    from lr_jax.convert import ConvertError, from_hf, load_flax

    d = Path(model_dir)
    try:
        if (d / "model_config.json").exists():
            return load_flax(d, **overrides)
        if (d / "config.json").exists():
            return from_hf(d, **overrides)
    except ConvertError as e:
        raise SampleError(str(e)) from None
    raise SampleError(f"{model_dir}: neither model_config.json (lr_jax) nor config.json (HF) found")


def eos_ids(cfg: Any, tok: Any, dirs: list[Path]) -> tuple[int, ...]:
    """EOS ids: the model config's, the tokenizer's and any in generation_config.json (e.g. end-of-turn)."""
    ids: set[int] = set()

    def add(v: Any) -> None:
        if isinstance(v, int) and not isinstance(v, bool):
            ids.add(v)
        elif isinstance(v, list | tuple):
            for x in v:
                add(x)

    add(cfg.eos_token_id)
    add(tok.eos_id)
    for d in dirs:
        gen = d / "generation_config.json"
        if gen.exists():
            add(jsonl.read_json_object(gen, error=SampleError).get("eos_token_id"))
    return tuple(sorted(ids))


def parse_mesh(spec: str | None, num_devices: int, cfg: Any) -> tuple[int, int, int]:
    """`--mesh` -> (data, fsdp, tensor); None/"" = (num_devices, 1, 1). Uses at most `num_devices`."""
    if not spec:
        return num_devices, 1, 1
    try:
        sizes = [int(x) for x in spec.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or any(x == 0 or x < -1 for x in sizes) or sizes.count(-1) > 1:
        raise SampleError(f"--mesh {spec!r}: want DATA,FSDP,TENSOR, positive ints (one may be -1)")
    if -1 in sizes:
        fixed = -int(np.prod(sizes))
        if num_devices % fixed:
            raise SampleError(f"--mesh {spec!r}: fixed axes ({fixed}) do not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // fixed
    data, fsdp, tensor = sizes
    if data * fsdp * tensor > num_devices:
        raise SampleError(f"--mesh {spec!r}: needs {data * fsdp * tensor} devices, {num_devices} available")
    if cfg.num_heads % tensor:
        # Heads are the dim tensor parallelism splits; mirrors config.mesh_shape's check for training.
        raise SampleError(f"--mesh {spec!r}: tensor={tensor} does not divide the model's num_heads "
                          f"{cfg.num_heads}")
    return data, fsdp, tensor




def load_tokenizer(tok_dir: Path, *, explicit: bool) -> Any:
    """The chat tokenizer in `tok_dir`; a file, or a directory without tokenizer files, is one line."""
    from lr_jax.data.tokenization import ChatTokenizer

    if tok_dir.exists() and not tok_dir.is_dir():
        raise SampleError(f"--tokenizer {tok_dir}: not a directory")
    if tok_dir.is_dir() and not any((tok_dir / f).exists() for f in TOKENIZER_VOCAB_FILES):
        how = "" if explicit else "; pass --tokenizer DIR"
        raise SampleError(f"{tok_dir}: no tokenizer files ({', '.join(TOKENIZER_VOCAB_FILES)}){how}")
    try:
        return ChatTokenizer.from_dir(str(tok_dir))
    except DataError as e:
        raise SampleError(one_line(str(e))) from None


class Completion(NamedTuple):
    """One decoded row: the text (EOS and special tokens dropped), whether an EOS ended it, tokens made
    (the EOS not counted); `token_ids`: the generated ids, the ending EOS included; `logprobs` (only when
    asked for): each of them's log-prob under the policy at temperature 1 (`lr_jax.model.decode`)."""

    text: str
    finished: bool
    num_tokens: int
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None


@dataclass
class Policy:
    """A model ready to decode: config, params (placed on the mesh), tokenizer, EOS ids and the mesh.

    The one decoding path of the project: `lr_jax.sample` and `lr_jax.eval predict` both call `complete`.
    """

    cfg: Any
    params: Any
    tok: Any
    tok_dir: Path
    eos: tuple[int, ...]
    mesh: Any
    shards: int  # data x fsdp: prompts per batch must be a multiple of it

    @classmethod
    def load(cls, model: str, *, tokenizer: str | None = None, dtype: str | None = None,
             mesh: str | None = None, before_weights: Callable[[Any], None] | None = None) -> Policy:
        """Load `model` (lr_jax or HF dir, or a `.gguf` file), its tokenizer and EOS ids; shard the params
        over `--mesh`.

        Everything that needs no weights (model config, mesh, tokenizer, the caller's `before_weights(cfg)`
        checks) runs first, so bad input fails in seconds, not after minutes of loading.
        """
        import jax

        from lr_jax.model.decode import shard_params
        from lr_jax.parallel.mesh import make_mesh

        if model.lower().endswith(".gguf"):  # converted once into a cached lr_jax dir, then read as one
            from lr_jax.convert import ConvertError, resolve

            try:
                model = str(resolve(model))
            except ConvertError as e:
                raise SampleError(str(e)) from None
        overrides = {"dtype": dtype} if dtype else {}
        cfg = model_config(model, **overrides)  # no weights yet: every check below is cheap
        devices = jax.local_devices()
        data, fsdp, tensor = parse_mesh(mesh, len(devices), cfg)
        tok_dir = _model_and_tokenizer_dirs(model, tokenizer)
        tok = load_tokenizer(tok_dir, explicit=tokenizer is not None)
        eos = eos_ids(cfg, tok, [Path(model), tok_dir])
        if before_weights is not None:
            before_weights(cfg)
        cfg, params = load_model(model, **overrides)
        m = None
        if data * fsdp * tensor > 1:
            m = make_mesh(data, fsdp, tensor, 1, devices=devices[:data * fsdp * tensor])
            params = shard_params(cfg, params, m)
        else:
            params = jax.device_put(params)
        return cls(cfg, params, tok, tok_dir, eos, m, data * fsdp)

    def round_batch(self, batch_size: int) -> int:
        """`batch_size` rounded up to a multiple of the batch shards (every device gets whole prompts)."""
        return -(-batch_size // self.shards) * self.shards

    def check_vocab(self, ids: list[int], where: str) -> None:
        if ids and max(ids) >= self.cfg.vocab_size:
            # jnp.take would silently clamp the id: a tokenizer/model mismatch must not produce samples.
            raise SampleError(f"{where}: token id {max(ids)} >= the model's vocab_size {self.cfg.vocab_size} "
                              f"(tokenizer {self.tok_dir} does not match)")

    def complete(self, prompt_ids: list[list[int]], keys: list[Any], *, num_samples: int, max_new_tokens: int,
                 temperature: float, top_k: int = 0, top_p: float = 1.0,
                 pad_to: int = 256, logprobs: bool = False) -> list[list[Completion]]:
        """`num_samples` completions per prompt (keys: `num_samples` per prompt, row b = p * N + k);
        `logprobs`: also each token's log-prob at temperature 1 (`Completion.logprobs`).

        A batch that does not split over the shards is padded with one-token dummy prompts whose rows
        finish at once and are dropped.
        """
        import jax.numpy as jnp

        from lr_jax.model.decode import generate, row_key

        N, n_live = num_samples, len(prompt_ids)
        n_pad = -n_live % self.shards
        ids = list(prompt_ids) + [[self.tok.pad_id]] * n_pad
        keys = list(keys) + [row_key(0, "", 0)] * (n_pad * N)
        gen = generate(self.cfg, self.params, ids, jnp.stack(keys), num_samples=N,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       eos_ids=self.eos, pad_id=self.tok.pad_id, pad_to=pad_to, mesh=self.mesh,
                       num_live=n_live, return_logprobs=logprobs)
        tokens, counts, finished = (np.asarray(x) for x in (gen.tokens, gen.num_tokens, gen.finished))
        lps = np.asarray(gen.logprobs) if logprobs else None
        out = []
        for i in range(n_live):
            rows = []
            for k in range(N):
                b = i * N + k
                ids = tokens[b, :counts[b]].tolist()
                row = ids[:-1] if finished[b] else ids  # the EOS that ended the row is not part of the text
                lp = None if lps is None else tuple(float(x) for x in lps[b, :counts[b]])
                rows.append(Completion(self.tok.tokenizer.decode(row, skip_special_tokens=True),
                                       bool(finished[b]), len(row), tuple(ids), lp))
            out.append(rows)
        return out
