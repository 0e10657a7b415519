"""Whether bf16 pays here: the probe's speed-up is float32's time over bf16's, and "faster" means a
clear gain, so that ``--bf16 auto`` never picks an emulated bf16 (80x slower on an AVX2-only CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from prefixtune.runtime import hardware


@pytest.fixture
def timings(monkeypatch):
    """Set the probe's per-dtype seconds; the cached speed-up is cleared before and after."""
    seconds = {}
    monkeypatch.setattr(hardware, "_seconds_per_matmul", lambda dtype: seconds[dtype])
    hardware.bf16_speedup.cache_clear()
    yield seconds
    hardware.bf16_speedup.cache_clear()


@pytest.mark.parametrize("fp32, bf16, speedup, faster", [
    (8e-3, 3e-3, 8 / 3, True),      # AMX / AVX-512 BF16: bf16 2.7x faster
    (12e-3, 1.0, 0.012, False),     # AVX2 only: bf16 emulated, 83x slower
    (10e-3, 9e-3, 10 / 9, False),   # a little faster is not worth the rounding
    (1.3, 1.0, 1.3, True),          # the threshold itself counts as faster
])
def test_the_speedup_is_fp32_time_over_bf16_time(timings, fp32, bf16, speedup, faster):
    timings.update({torch.float32: fp32, torch.bfloat16: bf16})
    assert hardware.bf16_speedup("cpu") == pytest.approx(speedup)
    assert hardware.bf16_is_faster("cpu") is faster


def test_the_probe_runs_once_per_process(timings):
    timings.update({torch.float32: 2.0, torch.bfloat16: 1.0})
    assert hardware.bf16_speedup("cpu") == 2.0
    timings.update({torch.float32: 1.0, torch.bfloat16: 2.0})
    assert hardware.bf16_speedup("cpu") == 2.0


def test_devices_without_a_probe_count_as_not_faster(timings):
    assert hardware.bf16_speedup("mps") == 1.0 and not hardware.bf16_is_faster("mps")


def test_the_real_probe_times_a_matmul():
    for dtype in (torch.float32, torch.bfloat16):
        seconds = hardware._seconds_per_matmul(dtype)
        assert math.isfinite(seconds) and 0 < seconds < 5
