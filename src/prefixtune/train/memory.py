"""Peak memory of a training run: CUDA allocator peak, or the process's peak resident set on CPU."""

from __future__ import annotations

import torch


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``); None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``start()`` before the first step, ``peak_mib()`` after the last.

    On CUDA: ``torch.cuda.max_memory_allocated`` since ``start``. On Linux CPUs: the peak resident
    set size (``VmHWM``), reset at ``start`` through ``/proc/self/clear_refs`` so loading the model
    does not count twice; where that reset is refused, the peak since the process started. None
    where neither is available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.reset = reset_peak_rss()

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = status_kib("VmHWM")
        return None if kib is None else kib / 1024
