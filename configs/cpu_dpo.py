"""CPU test mode, DPO: 8 simulated devices, a tiny random model, synthetic fact-QA pairs made on the fly.

    python -m lr_jax.train --config configs/cpu_dpo.py --config.train.out_dir=runs/cpu_dpo

The task (lr_jax.data.demo): a short document states facts ("The capital of Veloria is Ashford."), the query
asks one of them; chosen answers with the right value, rejected with a value that is not in the document.
The mesh is data 2 × fsdp 2 × sequence 2, so batch sharding, FSDP and the sequence axis all run. The model
starts random, so the thing to watch is the held-out reward accuracy climbing from 0.5 to ≥ 0.9.
Hyper-parameters are tuned for speed on 2 CPU cores (README, "Demo numbers"), not the paper's: those are in
configs/llama3_8b_dpo_64k.py.
"""

from lr_jax.model.config import ModelConfig
from lr_jax.parallel.cpu_mode import simulate_devices
from lr_jax.training.config import default_config_dict

# CPU test mode: 8 simulated devices. The config file is read during flag parsing, before JAX starts its
# backends, so setting these here is enough for `python -m lr_jax.train --config configs/cpu_dpo.py`.
simulate_devices(8)


def get_config():
    # Tied embeddings: copying a value from the document into the answer is much quicker to learn.
    model = ModelConfig.tiny(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=32, tie_embeddings=True,
                             attention_backend="blockwise", attention_block_size=32)
    c = default_config_dict(model)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 2, 2, 1, 2
    c.data.path = ""  # synthetic, generated in memory; the demo tokenizer is built into <out_dir>/tokenizer
    c.data.seq_len = 128
    c.data.batch_size = 32
    c.data.pairs_per_row = 1
    c.data.synthetic_pairs = 8192
    c.data.synthetic_eval_pairs = 64
    c.data.synthetic_context_len = 48
    c.data.synthetic_num_facts = 2
    c.dpo.objective = "dpo"
    c.dpo.beta = 0.15  # the paper's β and SFT weight; only the optimiser settings are demo-specific
    c.dpo.sft_weight = 0.1
    c.dpo.logprob_chunk_size = 64
    c.optim.lr = 5e-3
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.train.steps = 600
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.save_every = 300
    c.train.out_dir = "runs/cpu_dpo"
    return c
