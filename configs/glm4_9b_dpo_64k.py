"""LongReward DPO for GLM-4-9B at 64k context (Zhang et al. 2024, LongReward, arXiv 2410.21252).

Values the paper publishes are marked [paper §N] (sections of arXiv 2410.21252v1: §3 method, §4.1
experimental setup); values it does not publish are marked [ours]. Start from the SFT'd checkpoint
converted to HF format (GlmForCausalLM layout) and copied to the VM's local disk (`gcloud storage cp -r`);
checkpoints go to GCS:

    python -m lr_jax.train --config configs/glm4_9b_dpo_64k.py \
        --config.train.init_from=$HOME/glm4-9b-longsft --config.data.path=gs://BUCKET/pairs \
        --config.train.checkpoint_dir=gs://BUCKET/runs/glm4_9b_dpo
"""

from lr_jax.model.config import ModelConfig
from lr_jax.training.config import default_config_dict

# GLM-4-9B architecture (THUDM/glm-4-9b, HF "glm" family): 40 layers, 2 KV groups, half-rotary interleaved
# RoPE, QKV bias. rope_theta is the long-context chat value (10000 × rope_ratio 500); the checkpoint's own
# value wins when train.init_from is set.
GLM4_9B = ModelConfig(
    vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_layers=40, num_heads=32, num_kv_heads=2,
    head_dim=128, rope_theta=5_000_000.0, partial_rotary_factor=0.5, rotary_style="interleaved",
    rms_norm_eps=1.5625e-7, tie_embeddings=False, qkv_bias=True, post_norms=False, family="glm",
    max_position_embeddings=131072, pad_token_id=151329, eos_token_id=(151329, 151336, 151338),
    dtype="bfloat16", param_dtype="float32",  # [ours]
    attention_backend="ring", attention_block_size=512, scan_layers=True, remat_policy="full",
    # [ours] the TPU Pallas splash kernel computes each ring block (docs/plan.md: fits v5p-8, 55.3 GiB
    # per chip vs 55.1 with the pure-JAX tiles); TPU only: elsewhere --config.model.ring_block_kernel=jax
    ring_block_kernel="splash",
)


def get_config():
    c = default_config_dict(GLM4_9B)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 1, -1, 1, 4  # [ours] docs/plan.md
    c.data.seq_len = 65536  # [paper §4.1] 64k context
    c.data.batch_size = 16  # [paper §4.1] batch size 16
    c.data.pairs_per_row = 1
    c.dpo.objective = "dpo"
    c.dpo.beta = 0.15  # [paper §4.1] β = 0.15
    c.dpo.loss_type = "sigmoid"  # [paper §3]
    c.dpo.sft_weight = 0.1  # [paper §4.1] 0.1 × cross-entropy on the chosen response
    c.dpo.sft_normalization = "token"  # [ours] unpublished
    c.dpo.reference = "precomputed"  # [ours]
    c.dpo.logprob_chunk_size = 1024  # [ours] 1k × 151k vocab fp32 logits ≈ 0.6 GB per chunk
    c.optim.lr = 1e-6  # [paper §4.1] learning rate 1e-6
    c.optim.warmup_steps = 20  # [ours] unpublished
    c.optim.schedule = "cosine"  # [ours] unpublished
    c.optim.end_lr_ratio = 0.1  # [ours]
    c.optim.weight_decay = 0.0  # [ours]
    c.optim.grad_clip = 1.0  # [ours]
    # [ours] -1: one 64k row per (data x fsdp) shard per micro-batch, whatever the slice: 16 micro-batches on
    # v5p-8 (4 chips: fsdp 1 x sequence 4), 2 on v5p-64 (fsdp 8 x sequence 4). Fits every v5p slice from
    # v5p-8 to v5p-128 (docs/plan.md, compiled with python -m lr_jax.plan).
    c.optim.grad_accum = -1
    c.train.steps = 600  # [paper §4.1] "about 400-800 steps"
    c.train.save_every = 100
    c.train.distributed = True  # multi-host slice: jax.distributed.initialize()
    c.train.eval_every = 100
    c.train.out_dir = "runs/glm4_9b_dpo_64k"
    return c
