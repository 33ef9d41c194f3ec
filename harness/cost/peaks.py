"""Peak FLOP rates of common accelerators, the reference of model-FLOPs utilisation (MFU).

MFU = achieved training FLOP rate / the device's peak at the run's precision, where the
achieved rate counts 3 x forward FLOPs (2 per multiply-add) per image, as the estimate of
``run --dry-run`` does. Peaks are **dense** (no 2:4 sparsity) per GPU, in TFLOP/s, from
the vendors' datasheets (``source``; those list the sparse figure for tensor cores, which
is twice the dense one). ``fp32`` is the plain (CUDA-core) rate, what a float32 matmul
gets while TF32 is off (PyTorch's default for matmuls); ``tf32`` the tensor-core rate it
gets with ``torch.backends.cuda.matmul.allow_tf32 = True``.

On a CPU there is no table: the reference is the machine's measured large-matmul rate
(``harness.runtime.timing.plain_matmul_gflops``), measured in the same run.

No torch here: ``harness.spec.study`` reads saved bench results through this module.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError


@dataclass(frozen=True)
class Peak:
    name: str
    pattern: str  # regex on torch.cuda.get_device_name(), case-insensitive
    bf16: float | None
    tf32: float | None
    fp32: float
    source: str


_NV = "NVIDIA {} datasheet (dense = half the 'with sparsity' tensor-core figure)"
PEAKS = (
    Peak("H100 NVL", r"H100.*NVL", 835.5, 417.5, 60.0, _NV.format("H100 (NVL column)")),
    Peak("H100 PCIe", r"H100.*PCIe", 756.5, 378.0, 51.2, _NV.format("H100 (PCIe column)")),
    Peak("H100 SXM", r"H100", 989.5, 494.5, 67.0, _NV.format("H100 (SXM column)")),
    Peak("H200 NVL", r"H200.*NVL", 835.5, 417.5, 60.0, _NV.format("H200 (NVL column)")),
    Peak("H200 SXM", r"H200|GH200", 989.5, 494.5, 67.0, _NV.format("H200 (SXM column)")),
    Peak("A100", r"A100", 312.0, 156.0, 19.5, _NV.format("A100 (SXM and PCIe alike)")),
    Peak("L40S", r"L40S", 362.05, 183.0, 91.6, _NV.format("L40S")),
    Peak("L4", r"\bL4\b", 121.0, 60.0, 30.3, _NV.format("L4")),
    Peak("A10", r"\bA10\b", 125.0, 62.5, 31.2, _NV.format("A10")),
    Peak("MI300X", r"MI300X", 1307.4, 653.7, 163.4, "AMD Instinct MI300X datasheet (dense)"),
)
"""Checked in this order (the specific variants before the general name)."""


def lookup(device_name: str) -> Peak | None:
    """The table row of a ``torch.cuda.get_device_name()`` string, or None if unknown."""
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, re.IGNORECASE):
            return peak
    return None


def peak_tflops(device_name: str, precision: str, tf32: bool = False) -> tuple[float, str] | None:
    """(dense peak TFLOP/s, source) of ``device_name`` at ``precision`` ('bf16' or 'fp32';
    fp32 with ``tf32`` on reads the TF32 column), or None when the table lacks it."""
    peak = lookup(device_name)
    if peak is None:
        return None
    column = "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")
    value = getattr(peak, column)
    if value is None:
        return None
    return value, f"{peak.name} {column}: {peak.source}"


# --- saved `bench train` results as the dry run's estimate --------------------------------------
def estimate_from_bench(path: str | Path, where: str = "estimate.from_bench") -> dict:
    """``peak_tflops``, ``utilization`` and ``device`` for a study's ``estimate:`` section from
    a ``moe-harness bench train --out FILE`` result: its peak, and the median MFU of its
    rows (all measured on one device at one precision)."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
        machine, rows = result["machine"], result["rows"]
    except FileNotFoundError:
        raise HarnessError(f"{where}: {path}: no such file (write one with 'moe-harness bench "
                           f"train SPEC --out {path}')") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HarnessError(f"{where}: {path}: not a 'bench train --out' result "
                           f"({type(err).__name__}: {err})") from None
    mfus = [row["mfu"] for row in rows if isinstance(row.get("mfu"), (int, float))]
    if not mfus or not machine.get("peak_tflops"):
        raise HarnessError(f"{where}: {path}: has no measured MFU (a CPU result, or a GPU the "
                           f"peak table does not know: rerun with --peak-tflops)")
    utilization = statistics.median(mfus)
    if not 0 < utilization <= 1:
        raise HarnessError(f"{where}: {path}: median MFU {utilization} is outside (0, 1]")
    return {
        "peak_tflops": float(machine["peak_tflops"]),
        "utilization": utilization,
        "device": f"{machine['device']}, {machine['precision']}; MFU measured by bench train "
                  f"({', '.join(row['spec'] for row in rows)})",
    }
