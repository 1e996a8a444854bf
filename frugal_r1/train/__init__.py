"""Training: one shared loop (loop.py) and thin stages on it (pretrain and SFT in lm_stage.py, GRPO)."""
