"""LongReward DPO for Llama-3.1-8B at 64k context (Zhang et al. 2024, LongReward, arXiv 2410.21252).

Values the paper publishes are marked [paper §N] (sections of arXiv 2410.21252v1: §3 method, §4.1
experimental setup); values it does not publish are marked [ours] with the reason. Start from the
SFT'd checkpoint converted to HF format and copied to the VM's local disk (`gcloud storage cp -r`);
checkpoints go to GCS:

    python -m lr_jax.train --config configs/llama3_8b_dpo_64k.py \
        --config.train.init_from=$HOME/llama3.1-8b-longsft --config.data.path=gs://BUCKET/pairs \
        --config.train.checkpoint_dir=gs://BUCKET/runs/llama3_8b_dpo
"""

from lr_jax.model.config import ModelConfig, RopeScaling
from lr_jax.training.config import default_config_dict

# Llama-3.1-8B architecture (config.json of meta-llama/Llama-3.1-8B); replaced by the checkpoint's own
# architecture when train.init_from is set (the run-time fields below are kept).
LLAMA31_8B = ModelConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
    head_dim=128, rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192, "llama3"),
    rms_norm_eps=1e-5, tie_embeddings=False, qkv_bias=False, family="llama", max_position_embeddings=131072,
    bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
    dtype="bfloat16", param_dtype="float32",  # [ours] bf16 compute, fp32 master weights for lr 1e-6 updates
    attention_backend="ring", attention_block_size=512, scan_layers=True, remat_policy="full",
    # [ours] the TPU Pallas splash kernel computes each ring block (docs/plan.md: fits v5p-8, 47.8 GiB
    # per chip vs 47.2 with the pure-JAX tiles); TPU only: elsewhere --config.model.ring_block_kernel=jax
    ring_block_kernel="splash",
)


def get_config():
    c = default_config_dict(LLAMA31_8B)
    # [ours] ring attention over 4 sequence shards, FSDP over the rest (-1): v5p-8 = fsdp 1, v5p-64 = fsdp 8.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 1, -1, 1, 4
    c.data.seq_len = 65536  # [paper §4.1] 64k context
    c.data.batch_size = 16  # [paper §4.1] batch size 16 (pairs)
    c.data.pairs_per_row = 1  # one [prompt | chosen | rejected] pair per 64k row
    c.dpo.objective = "dpo"
    c.dpo.beta = 0.15  # [paper §4.1] β = 0.15
    c.dpo.loss_type = "sigmoid"  # [paper §3] standard DPO loss
    c.dpo.sft_weight = 0.1  # [paper §4.1] 0.1 × cross-entropy on the chosen response
    c.dpo.sft_normalization = "token"  # [ours] unpublished; per-token mean over chosen tokens
    c.dpo.reference = "precomputed"  # [ours] equivalent to a frozen reference, saves a forward per step
    c.dpo.logprob_chunk_size = 2048  # [ours] 2k × 128k vocab fp32 logits ≈ 1 GB per chunk
    c.optim.lr = 1e-6  # [paper §4.1] learning rate 1e-6
    c.optim.warmup_steps = 20  # [ours] unpublished; ~3-5% of the run
    c.optim.schedule = "cosine"  # [ours] unpublished
    c.optim.end_lr_ratio = 0.1  # [ours]
    c.optim.weight_decay = 0.0  # [ours]
    c.optim.grad_clip = 1.0  # [ours]
    # [ours] -1: one 64k row per (data x fsdp) shard per micro-batch, whatever the slice: 16 micro-batches on
    # v5p-8 (4 chips: fsdp 1 x sequence 4), 2 on v5p-64 (fsdp 8 x sequence 4). Fits every v5p slice from
    # v5p-8 to v5p-128 (docs/plan.md, compiled with python -m lr_jax.plan).
    c.optim.grad_accum = -1
    c.train.steps = 600  # [paper §4.1] "about 400-800 steps"; middle of the range
    c.train.save_every = 100
    c.train.distributed = True  # multi-host slice: jax.distributed.initialize()
    c.train.eval_every = 100
    c.train.log_every = 1
    c.train.out_dir = "runs/llama3_8b_dpo_64k"
    return c
