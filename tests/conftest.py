"""Test settings: one torch thread per xdist worker so two workers share two cores without thrashing."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
