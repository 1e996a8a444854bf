"""Rewards: safe verifiers that score a completion against a task row (see `verifiers`)."""

from frugal_r1.rewards.extract import answer_tag, last_boxed, math_answer
from frugal_r1.rewards.verifiers import Verdict, score, verify, verifier_for, warm_up

__all__ = ["Verdict", "answer_tag", "last_boxed", "math_answer", "score", "verifier_for", "verify", "warm_up"]
