"""``moe-harness doctor``: is this environment ready to run studies?

One check per line, each ``ok``, ``warn`` (optional, or something to know) or ``fail`` (a
run needs it), with what is wrong and how to fix it. What a run needs: Python >= 3.10,
torch, fvcore (FLOP counts), a writable results root; with ``--gpu`` also a CUDA device,
with ``--slurm`` a reachable SLURM controller, and a ``--storage`` URL given must be
reachable. The rest (no GPU on a CPU machine, xformers, SLURM when not asked for) warns.
``doctor`` exits 1 when any check fails, else 0.

Every check is bounded in time (subprocesses time out after a few seconds), so that
``doctor`` answers in seconds even when a controller or database does not.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


# --- the checks -----------------------------------------------------------------------------------
def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 10):  # noqa: UP036 - a venv of another Python
        return Check("python", "fail", f"Python {version}", "use Python >= 3.10")
    return ok("python", f"Python {version} ({sys.executable})")


def check_torch() -> Check:
    try:
        import torch
    except ImportError as err:
        return Check("torch", "fail", f"not importable: {err}",
                     "pip install torch==2.13.0 (CPU) or a CUDA build from download.pytorch.org")
    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        parts.append(f"cuDNN {cudnn}" if cudnn else "no cuDNN")
        try:
            parts.append("NCCL " + ".".join(map(str, torch.cuda.nccl.version())))
        except Exception:  # noqa: BLE001 - a build without NCCL
            parts.append("no NCCL")
    elif getattr(torch.version, "hip", None):
        parts.append(f"ROCm {torch.version.hip}")
    else:
        parts.append("CPU build (no CUDA)")
    parts.append(f"{torch.get_num_threads()} CPU threads")
    return ok("torch", ", ".join(parts))


def local_ranks(gpus: int) -> str:
    """Which devices a local run of several ranks (``train.gpus: N``) would use here."""
    if not gpus:
        return "a local run of train.gpus: N starts N gloo ranks on the CPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"a local run of train.gpus: N (N <= {gpus}) uses N of cuda:0..{gpus - 1}, one rank "
            f"each" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""))


def check_gpus(required: bool) -> Check:
    import torch

    status = "fail" if required else "warn"
    driver = _nvidia_driver()
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        return Check("gpu", status, "no CUDA device: this torch is a CPU build; runs use the CPU"
                     + (f" (NVIDIA driver {driver} is installed)" if driver else "")
                     + f"; {local_ranks(0)}",
                     "on a GPU machine install a CUDA build of torch, e.g. pip install "
                     "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
    if not torch.cuda.is_available():
        return Check("gpu", status, f"no CUDA device visible (torch CUDA {torch.version.cuda}, "
                     f"driver {driver or 'not found: no nvidia-smi'}, CUDA_VISIBLE_DEVICES="
                     f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); {local_ranks(0)}",
                     "run on a GPU node (SLURM: --gres=gpu:N); check nvidia-smi and that the "
                     "driver supports this CUDA version")
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        bf16 = props.major >= 8  # Ampere and later have bf16 tensor cores
        gpus.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                    f"sm_{props.major}{props.minor}, bf16 {'yes' if bf16 else 'NO'}")
    gpus.append(local_ranks(len(gpus)))
    if not all("bf16 yes" in g for g in gpus[:-1]):
        return Check("gpu", "warn", "; ".join(gpus) + (f"; driver {driver}" if driver else ""),
                     "bf16 autocast (train.precision auto) needs sm_80+: use "
                     "train.precision=fp32 on these GPUs")
    return ok("gpu", "; ".join(gpus) + (f"; driver {driver}" if driver else ""))


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out and out.strip() else None


def check_xformers() -> Check:
    import torch

    try:
        import xformers
        import xformers.ops as xops
    except Exception as err:  # noqa: BLE001 - ImportError, or a build whose kernels fail
        return Check("xformers", "warn", f"not importable ({type(err).__name__}); attention "
                     "backend 'auto' uses SDPA", "optional, CUDA only: "
                     "pip install 'moe-harness[xformers]' (a build matching this torch)")
    version = getattr(xformers, "__version__", "?")
    if not torch.cuda.is_available():
        return Check("xformers", "warn", f"xformers {version} imports, but its kernels need "
                     "CUDA (none here)", "")
    from harness.nn.attention import sdpa_attention

    try:
        q, k, v = (torch.randn(2, 64, 4, 32, device="cuda", dtype=torch.float16)
                   for _ in range(3))
        err = (xops.memory_efficient_attention(q, k, v) - sdpa_attention(q, k, v)).abs().max()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - kernel not built for this GPU, etc.
        return Check("xformers", "fail", f"xformers {version}: the attention kernel failed: "
                     f"{_first_line(exc)}", "reinstall an xformers build for this torch and "
                     "GPU, or set attention: sdpa")
    if not err < 1e-2:
        return Check("xformers", "fail", f"xformers {version}: attention differs from SDPA "
                     f"by {float(err):.3g} (fp16)", "reinstall xformers; use attention: sdpa")
    return ok("xformers", f"xformers {version}: memory_efficient_attention runs on CUDA and "
              f"equals SDPA (max diff {float(err):.1e}, fp16)")


def check_fvcore() -> Check:
    try:
        import fvcore
        from fvcore.nn import FlopCountAnalysis  # noqa: F401
    except ImportError as err:
        return Check("fvcore", "fail", f"not importable: {err}",
                     "pip install 'fvcore>=0.1.5' (runs count FLOPs with it: measure.flops)")
    return ok("fvcore", f"fvcore {getattr(fvcore, '__version__', '?')}")


def check_results(root: Path) -> Check:
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = str(root) + ("" if existing == root else f" (to be created under {existing})")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as err:
        return Check("results", "fail", f"{where}: not writable ({err.strerror or err})",
                     "pass --results DIR (or set MOE_HARNESS_RESULTS) to a writable folder; "
                     "on a cluster, one on the shared file system")
    fs, mount = file_system(existing)
    free = shutil.disk_usage(existing).free / 2**30
    note = "; a local file system: SLURM jobs on other nodes will not see it" if fs in LOCAL_FS \
        else ""
    return ok("results", f"{where}: writable, {fs} file system (mounted at {mount}), "
              f"{free:.0f} GiB free{note}")


LOCAL_FS = ("tmpfs", "overlay", "ext4", "xfs", "btrfs", "zfs")


def file_system(path: Path) -> tuple[str, str]:
    """(type, mount point) of the file system holding ``path``, from /proc/mounts."""
    path = path.resolve()
    best = ("unknown", "/")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1].replace("\\040", " ")
                if (path == Path(mount) or Path(mount) in path.parents) and \
                        len(mount) >= len(best[1]):
                    best = (parts[2], mount)
    except OSError:
        pass
    return best


def check_slurm(required: bool) -> Check:
    status = "fail" if required else "warn"
    if not shutil.which("sinfo"):
        return Check("slurm", status, "sinfo not found: no SLURM client on this machine",
                     "only --executor slurm needs it: run on a login node of the cluster")
    out = _run(["sinfo", "-h", "-o", "%P|%a|%D|%G"])
    if out is None:
        return Check("slurm", status, "sinfo did not answer (controller unreachable?)",
                     "check SLURM_CONF and that slurmctld is up (scontrol ping)")
    partitions = [describe_partition(line) for line in out.splitlines() if line.strip()]
    if not partitions:
        return Check("slurm", status, "sinfo lists no partitions", "ask the cluster's admins")
    return ok("slurm", "partitions: " + "; ".join(partitions))


def describe_partition(line: str) -> str:
    """'gpu*|up|4|gpu:h100:8(S:0-1)' -> 'gpu (default) up, 4 nodes, 8 GPUs per node (h100)'."""
    name, avail, nodes, gres = (line.split("|") + ["", "", "", ""])[:4]
    default = name.endswith("*")
    text = f"{name.rstrip('*')}{' (default)' if default else ''} {avail}, {nodes} nodes"
    gpus = gpus_per_node(gres)
    return text + (f", {gpus[0]} GPUs per node{f' ({gpus[1]})' if gpus[1] else ''}" if gpus
                   else ", no GPUs")


def gpus_per_node(gres: str) -> tuple[int, str] | None:
    """GPUs per node and their type from sinfo's %G (e.g. ``gpu:a100:4(S:0),shard:8``)."""
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2:
            count = fields[-1]
            if count.isdigit():
                return int(count), ":".join(fields[1:-1])
    return None


def check_storage(url: str) -> Check:
    """An Optuna storage URL reachable (nothing is created: a connection is opened, closed);
    a file storage checked as ``tune`` checks it (``harness.results.storage.check_storage``)."""
    from harness.errors import HarnessError
    from harness.results.storage import check_storage as check_url

    try:
        path = check_url(url)
    except HarnessError as err:
        return Check("storage", "fail", str(err),
                     "sqlite:///PATH or journal:PATH in an existing, writable folder, or "
                     "postgresql+psycopg2://USER@HOST:PORT/DB")
    if path is not None:
        fs, _ = file_system(path.parent)
        note = " (SQLite's locks are unsafe on network file systems: use journal: there)" \
            if url.startswith("sqlite") and fs.startswith(("nfs", "lustre", "gpfs", "beegfs")) \
            else ""
        return ok("storage", f"{url}: {path.parent} writable ({fs}){note}")
    try:
        import sqlalchemy

        args = {"connect_timeout": int(TIMEOUT_S)} if url.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - bad URL, driver missing, server down
        return Check("storage", "fail", f"{_hide_password(url)}: cannot connect: "
                     f"{_first_line(err)}", "check the host, port, database, user (password "
                     "in ~/.pgpass or $PGPASSWORD) and that the driver is installed")
    return ok("storage", f"{_hide_password(url)}: reachable")


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def check_cpu() -> Check:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    detail = f"{cores} cores usable, torch uses {torch.get_num_threads()} threads" + (
        f", load average {load:.1f}" if load is not None else "")
    if load is not None and cores and load > cores:
        return Check("cpu", "warn", detail + ": the machine is busy, CPU timings will be "
                     "flagged", "time when it is quieter, or fix the thread count "
                     "(train.threads, --threads) below the free cores")
    return ok("cpu", detail)


# --- running them --------------------------------------------------------------------------------
def run_checks(results_root: Path, storage: str | None = None, *, gpu: bool = False,
               slurm: bool = False) -> list[Check]:
    """Every check, in order; a check that crashes is a ``fail`` naming the error."""
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python), ("torch", check_torch)]
    torch_ok = _importable("torch")
    if torch_ok:
        checks += [("cpu", check_cpu), ("gpu", lambda: check_gpus(gpu)),
                   ("xformers", check_xformers)]
    checks += [("fvcore", check_fvcore), ("results", lambda: check_results(results_root)),
               ("slurm", lambda: check_slurm(slurm))]
    if storage:
        checks.append(("storage", lambda: check_storage(storage)))
    out = []
    for name, fn in checks:
        try:
            out.append(fn())
        except Exception as err:  # noqa: BLE001 - a broken check is a finding, not a crash
            out.append(Check(name, "fail", f"the check crashed: {type(err).__name__}: "
                             f"{_first_line(err)}", "report this with the output of doctor"))
    return out


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def print_checks(checks: list[Check]) -> None:
    """One line per check: status, name, detail, and the fix after an arrow."""
    for c in checks:
        fix = f" -> {c.fix}" if c.fix and c.status != "ok" else ""
        print(f"{c.status:<4}  {c.name:<8}  {c.detail}{fix}")
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"not ready: {', '.join(failed)} failed" if failed else "ready" + (
        " (with warnings)" if any(c.status == "warn" for c in checks) else ""))


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
