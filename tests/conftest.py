import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# scripts/mutate.py runs two single-threaded workers side by side
torch.set_num_threads(int(os.environ.get("PREFIXTUNE_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
