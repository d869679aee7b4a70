"""Local GPU telemetry through NVML (``pynvml``, from the optional ``nvidia-ml-py`` package).

For an engine that runs on this host: :class:`NvmlGpus` reads the same neutral names as dcgm-exporter's
series (``gpu_util_percent``, ``gpu_fb_used_mib``, ``gpu_fb_free_mib``, ``gpu_power_watts``,
``gpu_temp_celsius``, ``gpu_sm_clock_mhz``; label ``gpu`` = the device index), validated like every
sample (a value NVML reports as unsupported is left out, never 0). Hand it to a
:class:`~rllmtop.metrics.scrape.Scraper` as ``gpu=``; it is read in a thread each poll.

The import is guarded: without ``pynvml``, or without an NVIDIA driver, :meth:`NvmlGpus.open` raises
:class:`GpuUnavailable` with one line saying why. No GPU is on the machines this was written on: the
mapping is tested against a stand-in module with NVML's documented call signatures, not a real device.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from rllmtop.events import MetricSample
from rllmtop.metrics.prom import value_problem

__all__ = ["GpuUnavailable", "NvmlGpus"]


class GpuUnavailable(RuntimeError):
    """NVML cannot be used here (no pynvml, no driver, no such device): one line saying why."""


class NvmlGpus:
    """Reads GPUs ``indices`` (default: all) through NVML. Use :meth:`open`; :meth:`close` when done."""

    def __init__(self, nvml: Any, handles: Sequence[tuple[str, Any]]) -> None:
        self._nvml = nvml
        self._handles = tuple(handles)

    @classmethod
    def open(cls, indices: Sequence[int] | None = None, *, module: str = "pynvml") -> NvmlGpus:
        try:
            nvml = importlib.import_module(module)
        except ImportError:
            raise GpuUnavailable(
                "NVML is not installed (pip install nvidia-ml-py for local GPU telemetry)"
            ) from None
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as e:  # pynvml.NVMLError and friends
            raise GpuUnavailable(f"NVML cannot start ({type(e).__name__}: {e}): no NVIDIA driver?") from None
        chosen = list(range(count)) if indices is None else list(indices)
        bad = [i for i in chosen if not 0 <= i < count]
        if bad:
            nvml.nvmlShutdown()
            raise GpuUnavailable(f"no GPU {bad[0]} on this host (NVML sees {count})")
        try:
            handles = [(str(i), nvml.nvmlDeviceGetHandleByIndex(i)) for i in chosen]
        except Exception as e:
            nvml.nvmlShutdown()
            raise GpuUnavailable(f"NVML cannot open the GPUs ({type(e).__name__}: {e})") from None
        return cls(nvml, handles)

    def read(self, t: float) -> list[MetricSample]:
        """One sample per supported value per GPU (blocking: call it in a thread)."""
        n = self._nvml
        out: list[MetricSample] = []
        for gpu, h in self._handles:
            labels = (("gpu", gpu),)
            for name, get in (
                ("gpu_util_percent", lambda h=h: n.nvmlDeviceGetUtilizationRates(h).gpu),
                ("gpu_fb_used_mib", lambda h=h: n.nvmlDeviceGetMemoryInfo(h).used / 2**20),
                ("gpu_fb_free_mib", lambda h=h: n.nvmlDeviceGetMemoryInfo(h).free / 2**20),
                ("gpu_power_watts", lambda h=h: n.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ("gpu_temp_celsius", lambda h=h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                ("gpu_sm_clock_mhz", lambda h=h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            ):
                try:
                    v = float(get())
                except Exception:  # NVMLError_NotSupported on some boards: that value is missing
                    continue
                if not value_problem(name, v):
                    out.append(MetricSample(t, name, v, labels))
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
