"""Whether bf16 pays here: on the CPU the probe's speed-up is float32's time over bf16's and
"faster" means a clear gain, so that ``--bf16 auto`` never picks an emulated bf16 (70-420x slower
on an AVX2-only CPU); on CUDA it is whether the GPU has bf16 tensor cores."""

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


@pytest.mark.parametrize("fp32, bf16, speedup, faster, slower", [
    (8e-3, 3e-3, 8 / 3, True, False),      # AVX-512 BF16 / AMX: bf16 2.7x faster
    (12e-3, 1.0, 0.012, False, True),      # AVX2 only: bf16 emulated, 83x slower
    (10e-3, 9e-3, 10 / 9, False, False),   # a little faster is not worth the rounding
    (1.3, 1.0, 1.3, True, False),          # the threshold itself counts as faster
])
def test_on_the_cpu_the_speedup_is_fp32_time_over_bf16_time(timings, fp32, bf16, speedup, faster, slower):
    timings.update({torch.float32: fp32, torch.bfloat16: bf16})
    assert hardware.bf16_speedup() == pytest.approx(speedup)
    assert hardware.bf16_is_faster("cpu") is faster and hardware.bf16_is_slower("cpu") is slower
    assert f"runs at {speedup:.2g}x float32's speed" in hardware.bf16_words("cpu")


def test_the_probe_runs_once_per_process(timings):
    timings.update({torch.float32: 2.0, torch.bfloat16: 1.0})
    assert hardware.bf16_speedup() == 2.0
    timings.update({torch.float32: 1.0, torch.bfloat16: 2.0})
    assert hardware.bf16_speedup() == 2.0


@pytest.mark.parametrize("units", [True, False])
def test_on_cuda_it_is_whether_the_gpu_has_bf16_tensor_cores(monkeypatch, timings, units):
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return units or including_emulation  # emulation would always say yes

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert hardware.bf16_is_faster("cuda") is units and hardware.bf16_is_slower("cuda") is not units
    assert hardware.bf16_words("cuda") == f"this GPU {'has' if units else 'has no'} bf16 tensor cores"
    assert asked and not any(asked)  # never counts emulation as support
    assert timings == {}  # and the CPU probe did not run


def test_other_devices_count_as_neither_faster_nor_slower(timings):
    assert not hardware.bf16_is_faster("mps") and not hardware.bf16_is_slower("mps")


def test_the_real_probe_times_a_matmul_and_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        seconds = hardware._seconds_per_matmul(dtype)
        assert math.isfinite(seconds) and 0 < seconds < 5
    assert torch.equal(torch.rand(3), want)
