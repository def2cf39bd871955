"""`python -m lr_jax.sample` — N responses per prompt from a local checkpoint, written as Samples JSONL.

    python -m lr_jax.sample --model MODEL_DIR --prompts prompts.jsonl --out samples.jsonl \\
        [--num-samples 10] [--temperature 1.0] [--top-p 1.0] [--top-k 0] [--max-new-tokens 1024] \\
        [--max-prompt-tokens N] [--batch-size 1] [--seed 0] [--tokenizer DIR] [--dtype bfloat16] \\
        [--mesh DATA,FSDP,TENSOR] [--logprobs]

MODEL_DIR is an lr_jax dir (`model_config.json` + `params/`, as `lr_jax.convert hf2flax` or training writes)
or an HF dir (`config.json` + safetensors). The tokenizer comes from `--tokenizer`, else
`MODEL_DIR/tokenizer`, else MODEL_DIR. The policy prompt is one user turn ``context + "\\n\\n" + query``
through the tokenizer's chat template (`lr_jax.data.tokenization`); a prompt longer than
`--max-prompt-tokens` loses tokens from the middle of its context (never the template or the query); one
that still does not fit is skipped and counted.

`--batch-size` is prompts per prefill; each prompt is prefilled once and its `--num-samples` rows share that
KV prefix (`lr_jax.model.decode`). Rows are appended and fsynced after every batch; a re-run skips the ids
already in `--out` (a torn last line from a kill is cut first) and, because sample k of a prompt always uses
the key (seed, prompt id, k), regenerates missing samples exactly.

`--logprobs` adds each row's generated `token_ids` (the ending EOS included) and their log-probs under the
policy at temperature 1 (not the warped sampling distribution): GRPO's old log-probs (docs/grpo.md).

Decoding lives in `Policy` (model + tokenizer + EOS ids + mesh, `Policy.complete`): the one decoding path,
shared with `python -m lr_jax.eval predict`.

`--mesh DATA,FSDP,TENSOR` (default: every local device on DATA; one axis may be -1 = the devices the others
leave; `1,1,1` = one device, no mesh) shards the run like training: params with the trainer's
`param_shardings` (FSDP / tensor), prompts with their rows and KV caches over data x fsdp, KV heads over
tensor. `--batch-size` is rounded up to a multiple of data x fsdp and a short last batch is padded with
dummy prompts whose rows finish at once and are not written; the file is byte-identical to a one-device
run.

`--engine openai --base-url URL --served-model NAME`: an OpenAI-compatible inference engine (vLLM, SGLang,
...) decodes instead, through the judge's own client machinery (`lr_jax.openai_client`); the same rows, with
``sampler.engine = "openai"`` (`lr_jax.sample.engine`, docs/sampling.md).

Modules: `options` (`SampleOptions`: every flag, default and bound, the API's argument), `files` (the
Prompts and Samples files), `policy` (model, tokenizer, mesh, `Policy.complete`), `sampling` (`run`), `engine`
(`run_engine`: sampling through an inference engine), `cli` (the command line, flags made from
`SampleOptions`).

Bad input is one ``error:`` line and exit status 2 (`lr_jax.errors.exit_code`), raised before the work it
would spoil: options (finite, in range; seeds are 32-bit) before any file is read, the `--out` path before
anything else, and the model config, mesh, tokenizer and length limits before the weights load. An `--out`
that is not a Samples file is reported, never cut.
"""

from lr_jax.sample.cli import main
from lr_jax.sample.files import append_fsync, check_output_file, load_prompts, recover_output
from lr_jax.sample.options import (
    MAX_INT32,
    MAX_SEED,
    MIN_TEMPERATURE,
    SampleError,
    SampleOptions,
    decoding_fields,
    validate_options,
)
from lr_jax.sample.policy import (
    Completion,
    Policy,
    eos_ids,
    load_model,
    load_tokenizer,
    model_config,
    parse_mesh,
)
from lr_jax.sample.sampling import Stats, encode, prompt_limit, run

__all__ = [
    "MAX_INT32", "MAX_SEED", "MIN_TEMPERATURE", "Completion", "Policy", "SampleError",
    "SampleOptions", "Stats", "append_fsync", "check_output_file", "decoding_fields", "encode", "eos_ids",
    "load_model", "load_prompts", "load_tokenizer", "main", "model_config", "parse_mesh", "prompt_limit",
    "recover_output", "run", "validate_options",
]
