"""The GPU acceptance suite (``make test-gpu``): every test here is marked ``gpu`` and is
skipped, with the reason, where torch sees no CUDA device, so that CI on CPU machines
reports them as skipped rather than failing or hiding them.

Numbers the tests measure (errors against the references, FLOP counts, timings) are
appended as JSON lines to ``$MOE_GPU_OUT/numbers.jsonl`` when that variable is set
(``tests/gpu/run.sh`` sets it), so that a run on a GPU leaves its figures behind.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

NO_CUDA = (f"no CUDA device: torch {torch.__version__} reports torch.cuda.is_available() = "
           f"False; run on a GPU machine with a CUDA build of torch (make test-gpu)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(autouse=True)
def _exact_fp32():
    """float32 means float32: no TF32 in matmuls or convolutions while a test runs."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def record_numbers(request):
    """``record_numbers(**values)``: one JSON line, named by the test, in numbers.jsonl."""
    folder = os.environ.get("MOE_GPU_OUT")

    def write(**values):
        if folder:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "numbers.jsonl"), "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, **values}) + "\n")

    return write
