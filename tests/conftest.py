"""Test-wide settings: one intra-op thread. The tensors in tests are small, so threads buy
nothing, and on a busy 2-core machine oversubscribed threads slow every test several-fold."""

import torch

torch.set_num_threads(1)
