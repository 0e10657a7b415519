"""What this machine runs fast: whether bf16 matmuls beat float32 ones here.

It depends on the machine, not the model: a CPU with AVX-512 BF16 or AMX runs a bf16 matmul 2-2.6x
faster than float32, one without them (AVX2 only) emulates it some 80x *slower*; a GPU with bf16
tensor cores (Ampere and later) runs it faster. So ``--bf16 auto`` (training) and ``--dtype auto``
(serving) ask :func:`bf16_is_faster` instead of assuming.
"""

from __future__ import annotations

import functools
import time

import torch

#: bf16 counts as faster when its matmuls run at least this many times faster than float32's: a
#: clear gain, since the rest of a step (elementwise work, an fp32 adapter) does not speed up
FASTER = 1.3
PROBE_SIZE = 512  # the CPU probe multiplies two (PROBE_SIZE, PROBE_SIZE) matrices
PROBE_SECONDS = 0.01  # ... repeated until the repetitions together take this long


def _seconds_per_matmul(dtype: torch.dtype) -> float:
    """Wall time of one ``(n, n) @ (n, n)`` matmul in ``dtype`` on the CPU (after one warm-up call;
    repeated 1, 4, 16, ... times until the repetitions take ``PROBE_SECONDS``)."""
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
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
def bf16_speedup(device_type: str) -> float:
    """How many times faster a bf16 matmul runs than a float32 one on ``device_type`` ("cpu",
    "cuda", ...), once per process.

    CPU: measured with torch's current thread count (~0.1 s; ~0.5 s where bf16 is emulated). CUDA:
    2.0 where the GPU has bf16 tensor cores, 0.5 where bf16 is only emulated
    (``torch.cuda.is_bf16_supported(including_emulation=False)``). Other devices: 1.0 (unknown,
    which :func:`bf16_is_faster` reads as no).
    """
    if device_type == "cpu":
        with torch.no_grad():
            return _seconds_per_matmul(torch.float32) / _seconds_per_matmul(torch.bfloat16)
    if device_type == "cuda":
        return 2.0 if torch.cuda.is_bf16_supported(including_emulation=False) else 0.5
    return 1.0


def bf16_is_faster(device_type: str) -> bool:
    """Whether bf16 pays on ``device_type``: its matmuls at least :data:`FASTER` times float32's speed."""
    return bf16_speedup(device_type) >= FASTER
