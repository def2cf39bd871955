"""The LongReward loop as one resumable job: ``sft → sample → score → pairs → dpo → eval``
(``python -m lr_jax.longreward``, docs/longreward.md).

Every stage runs in its own sub-directory of ``config.run_dir`` with a commit marker ``DONE.json`` written
only when the stage has finished, recording what it was run with. A re-run skips committed stages and
re-enters the first unfinished one, which resumes where it stopped by its own mechanism (trainer
checkpoints, the Samples file, the judge's cache / ``scored.jsonl``); a stage run with other settings is
refused in one line (or re-run with ``config.rerun_changed``).

Modules: `config` (the sections, their checks, each stage's settings), `loop` (`Loop`: the orchestrator),
`stages` (what each stage does, `STAGE_TABLE`), `judging` (the judge CLIs and the scripted server as
subprocesses that die with the loop), `markers` (commit markers and recorded settings), `report` (metrics,
summary, table, PNG), `__main__` (the command line).

Disk layout (round 1 at the top; round k >= 2 under ``round_k/``)::

    run_dir/config.json            the loop config as run (written once the recorded settings agree)
    run_dir/data/                  demo only: prompts.jsonl, prompts_eval.jsonl, sft.jsonl, tokenizer/
    run_dir/sft/                   trainer out_dir (checkpoints/, metrics.jsonl), hf/ = the SFT policy
    run_dir/sample/samples.jsonl   N responses per training prompt
    run_dir/score/                 scored.jsonl, summary.json
    run_dir/pairs/                 preference TFRecords + metadata.json
    run_dir/dpo/                   trainer out_dir, hf/ = the DPO policy
    run_dir/eval/{before,after}/   held-out samples, their scores, metrics.json
    run_dir/judge_cache.sqlite     the judge's answers, one cache for score, eval and every round
    run_dir/judge_server.json      CPU test mode: the scripted judge's port, reused by every run of the job
    run_dir/<stage>/DONE.json      the commit marker (what the stage produced, the settings it ran with)
    run_dir/<stage>/STARTED.json   the settings a stage started with (checked when it is resumed)
    run_dir/replaced/<time>/       stages moved aside by --config.rerun_changed=True
    run_dir/summary.json, summary.md, eval.png

Every input error is one ``error: ...`` line naming the stage or field and the file, exit status 2.
"""

from lr_jax.longreward.config import STAGES, default_config


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`lr-longreward`); see `lr_jax.longreward.__main__`."""
    from lr_jax.longreward.__main__ import main as cli_main

    cli_main(argv)


__all__ = ["STAGES", "default_config", "main"]
