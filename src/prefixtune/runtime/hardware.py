"""What this machine runs fast: whether bf16 matmuls beat float32 ones here.

It depends on the machine, not the model: a CPU with AVX-512 BF16 or AMX runs a bf16 matmul
2.1-2.4x faster than float32 (measured here), one without them (AVX2 only) emulates it 70-420x
*slower*; a GPU with bf16 tensor cores (Ampere and later) runs it faster. So ``--bf16 auto``
(training) and ``--dtype auto`` (serving) ask :func:`bf16_is_faster` instead of assuming.
"""

from __future__ import annotations

import functools
import time

import torch

#: on a CPU, bf16 counts as faster when its matmuls run at least this many times faster than
#: float32's: a clear gain, since the rest of a step (elementwise work, an fp32 adapter) does not
#: speed up
FASTER = 1.3
PROBE_SIZE = 512  # the CPU probe multiplies two (PROBE_SIZE, PROBE_SIZE) matrices
PROBE_SECONDS = 0.01  # ... repeated until the repetitions together take this long


def _seconds_per_matmul(dtype: torch.dtype) -> float:
    """Wall time of one ``(n, n) @ (n, n)`` matmul in ``dtype`` on the CPU (after one warm-up call;
    repeated 1, 4, 16, ... times until the repetitions take ``PROBE_SECONDS``). Its matrices come
    from a generator of its own: the global random state is left as it was."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator).to(dtype)
    a @ b  # warm-up: kernel selection, allocation
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        elapsed = time.perf_counter() - start
        if elapsed >= PROBE_SECONDS or reps >= 4096:
            return elapsed / reps
        reps *= 4


@functools.cache
def bf16_speedup() -> float:
    """How many times faster a bf16 matmul runs than a float32 one on this process's CPU, with
    torch's current thread count; measured once per process (~0.1 s, ~0.5 s where bf16 is emulated)."""
    with torch.no_grad():
        return _seconds_per_matmul(torch.float32) / _seconds_per_matmul(torch.bfloat16)


def _cuda_has_bf16_units() -> bool:
    return torch.cuda.is_bf16_supported(including_emulation=False)


def bf16_is_faster(device_type: str) -> bool:
    """Whether bf16 pays on ``device_type``: on the CPU its matmuls measure at least :data:`FASTER`
    times float32's speed; on CUDA the GPU has bf16 tensor cores; elsewhere no (unknown)."""
    if device_type == "cpu":
        return bf16_speedup() >= FASTER
    if device_type == "cuda":
        return _cuda_has_bf16_units()
    return False


def bf16_is_slower(device_type: str) -> bool:
    """Whether bf16 costs time on ``device_type``: on the CPU its matmuls measure slower than
    float32's (no bf16 units: emulated); on CUDA the GPU has no bf16 tensor cores; elsewhere no."""
    if device_type == "cpu":
        return bf16_speedup() < 1.0
    if device_type == "cuda":
        return not _cuda_has_bf16_units()
    return False


def bf16_words(device_type: str) -> str:
    """What :func:`bf16_is_faster` found, for a log line: the measured ratio on the CPU."""
    if device_type == "cpu":
        return f"a bf16 matmul runs at {bf16_speedup():.2g}x float32's speed on this CPU"
    if device_type == "cuda":
        return f"this GPU {'has' if _cuda_has_bf16_units() else 'has no'} bf16 tensor cores"
    return f"no bf16 probe for {device_type} devices"
