"""frugal-r1: DeepSeek-R1 on a budget.

The DeepSeek-V3 architecture (MLA, DeepSeekMoE, MTP), pretraining and SFT that run on a CPU,
the R1 recipe (GRPO with verifiable rewards), R1-style evaluation, and a cost ledger.
"""

__version__ = "0.1.0"
