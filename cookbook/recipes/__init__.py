"""Runnable recipes: `python -m cookbook.recipes.<name> --help`, or `run(Config(...))` from Python.

sl: supervised fine-tuning on a chat JSONL; rl: GRPO-style RL on a verifiable task; dpo: direct
preference optimisation; rlhf: SFT, a reward model, then RL against it; eval: sample and score
checkpoints on a task, side by side.
"""
