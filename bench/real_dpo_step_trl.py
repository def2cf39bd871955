"""TRL's side of `bench/real_dpo_step.py`: a `DPOTrainer` worker (needs only torch, transformers, trl, peft).

    /work/venvs/trl/bin/python bench/real_dpo_step_trl.py SPEC.json      # started by real_dpo_step.py

SPEC.json: {"hf_dir", "prompt_ids", "chosen_ids", "rejected_ids", "mode": "full"|"lora", "lora": {rank,
alpha, targets}, "beta", "sft_weight", "lr", "gradient_checkpointing", "threads"}. The pair is already token
ids (the orchestrator made them with the same tokenizer), so `_prepare_dataset` passes the dataset through;
everything else is TRL's own training loop: `DPOTrainer.train()` with sigmoid DPO + `sft` on chosen
(`loss_type=["sigmoid", "sft"]`, `loss_weights=[1, sft_weight]`), the reference forward in the step (a frozen
copy for full fine-tuning; the base with adapters disabled for LoRA), AdamW, fp32 on CPU.

Protocol (see bench/real_common.py): after setup it answers ``@@ {"ready": ...}``; each ``run`` line lets one
optimizer step go (a callback blocks in `on_step_begin` until the line arrives) and answers its wall time
(`on_step_begin` -> `on_step_end`: forward, backward, optimizer) and loss; ``quit`` answers the peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

TAG = "@@ "


def _answer(obj: dict) -> None:
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    import torch

    torch.set_num_threads(int(spec.get("threads") or os.cpu_count() or 1))
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(spec["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    peft_config = None
    if spec["mode"] == "lora":
        from peft import LoraConfig

        lo = spec["lora"]
        peft_config = LoraConfig(r=lo["rank"], lora_alpha=lo["alpha"], lora_dropout=0.0,
                                 target_modules=lo["targets"], task_type="CAUSAL_LM")
    row = {"prompt_ids": spec["prompt_ids"], "chosen_ids": spec["chosen_ids"],
           "rejected_ids": spec["rejected_ids"]}
    data = Dataset.from_list([row] * 10_000)  # more steps than any run takes; quit ends it
    args = DPOConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=1, gradient_accumulation_steps=1,
        learning_rate=spec["lr"], lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
        beta=spec["beta"], loss_type=["sigmoid", "sft"], loss_weights=[1.0, spec["sft_weight"]],
        max_length=None, bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=bool(spec["gradient_checkpointing"]),
        precompute_ref_log_probs=False, report_to="none", save_strategy="no", logging_steps=10_000,
        dataloader_num_workers=0, disable_tqdm=True, seed=0, max_steps=10_000,
    )

    class PreTokenized(DPOTrainer):
        """The dataset already holds prompt_ids / chosen_ids / rejected_ids (EOS included)."""

        last_loss = float("nan")

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if return_outputs else out
            self.last_loss = float(loss.detach())
            return out

    class Gate(TrainerCallback):
        """Blocks each step until the orchestrator says `run`; times the step; `quit` ends the process."""

        t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            for line in sys.stdin:
                cmd = line.strip()
                if cmd == "run":
                    break
                if cmd == "quit":
                    _answer({"peak_rss_mib": _rss_mib()})
                    sys.stdout.flush()
                    os._exit(0)
            else:
                os._exit(0)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t
            _answer({"step_s": dt, "loss": trainer.last_loss, "rss_mib": _rss_mib()})

    trainer = PreTokenized(model=model, args=args, train_dataset=data, processing_class=tok,
                           peft_config=peft_config, callbacks=[Gate()])
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    _answer({"ready": True, "setup_s": time.perf_counter() - t0, "trainable_params": n_train,
             "seq_tokens": 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]),
             "versions": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
                         f"trl {__import__('trl').__version__}"})
    trainer.train()


if __name__ == "__main__":
    main()
