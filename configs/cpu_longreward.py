"""CPU test mode, the whole LongReward loop: SFT → sample → score (scripted judge) → pairs → DPO → eval.

    python -m lr_jax.longreward --config configs/cpu_longreward.py --config.run_dir=runs/cpu_longreward

Data (lr_jax.data.demo, made in run_dir/data/): "find the fact" documents of ~48 tokens with one fact, the
query asks it; SFT examples with the right answer, training prompts (answers unused by the loop) and
held-out prompts with reference answers, from disjoint id streams. A tiny model is SFT'd briefly, so its
temperature-1 samples are sometimes right and sometimes wrong; the scripted judge (a real HTTP server,
word overlap: a value the document never states loses faithfulness and completeness) scores them; best vs
worst become the DPO pairs; eval samples 4 answers per held-out prompt (temperature 1, the same seeds)
from the policy before and after DPO and judges them all. Sizes fit the 2-core CPU (~2-3 minutes measured,
docs/benchmarks.md), not the paper's settings: those are in configs/llama3_8b_longreward.py.
"""

from lr_jax.longreward import default_config
from lr_jax.model.config import ModelConfig
from lr_jax.parallel.cpu_mode import simulate_devices

simulate_devices(8)  # read during flag parsing, before JAX starts its backends


def _trainer(c, *, steps: int, lr: float, batch: int) -> None:
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 2, 2, 1, 2
    c.data.seq_len = 96
    c.data.batch_size = batch
    c.dpo.logprob_chunk_size = 32
    c.optim.lr = lr
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.train.steps = steps
    c.train.log_every = 10
    c.train.save_every = 50
    c.train.tensorboard = False


def get_config():
    # The cpu_dpo demo's model: tied embeddings make copying a value from the document quick to learn.
    model = ModelConfig.tiny(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=32, tie_embeddings=True,
                             attention_backend="blockwise", attention_block_size=32)
    c = default_config(model)
    c.run_dir = "runs/cpu_longreward"
    c.demo.sft_examples, c.demo.train_prompts, c.demo.eval_prompts = 4096, 128, 64
    # lr 2e-3, 150 steps: the model has started to copy the value from the document (~57 % of the
    # temperature-1 samples right, seed 0), so samples differ in quality and DPO has room; 5e-3 sat on a
    # plateau of one guess per answer type for longer, 300 steps landed anywhere from 20 to 97 % by seed.
    _trainer(c.sft, steps=150, lr=2e-3, batch=32)
    _trainer(c.dpo, steps=150, lr=1e-3, batch=16)
    c.dpo_epochs = 0.0  # a fixed 150 steps (the settings above were tuned at this count, docs/benchmarks.md)
    # Tuned on this tiny model (docs/benchmarks.md), not the paper's β 0.15 / SFT weight 0.1: with ~25-120
    # judged pairs those let DPO shift the model's guess per answer type (e.g. every colour "purple" ->
    # "amber") instead of copying the value, and the held-out reward moved by chance. β 0.5 keeps the policy
    # near the SFT one, SFT weight 2 trains the judge's chosen answers directly.
    c.dpo.dpo.beta = 0.5
    c.dpo.dpo.sft_weight = 2.0
    c.sample.num_samples = 8
    c.sample.temperature = 1.0
    c.sample.max_new_tokens = 16
    c.sample.batch_size = 16
    c.sample.pad_to = 64
    # Held-out eval: 4 answers per prompt at temperature 1, the same sampler seeds for both policies (common
    # random numbers), i.e. the judged reward of each policy's own answers. Greedy answers saturate: on 2 of
    # 3 seeds the SFT policy is already right on all 64 held-out prompts, so DPO cannot show anything there
    # (measured: greedy +0.71 / 0.00 / -0.05, sampled +1.30 / +0.46 / +0.27; docs/benchmarks.md).
    c.eval.sample.temperature = 1.0
    c.eval.sample.num_samples = 4
    c.score.scripted = True  # CPU test mode: the built-in scripted judge server, labelled in every output
    c.score.args = "--concurrency 32"
    c.pairs.args = "--min-responses 5"
    return c
