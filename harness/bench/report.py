"""Benchmark of report generation: 10,000 synthetic records to one HTML page.

The target is under 5 seconds on 2 CPU cores. Building the synthetic records and
writing them as a store is set-up and not timed; what is timed is what ``moe-harness report``
does: read the store (``load_records``), aggregate, compute the fronts, build the figures
(the paper's figures and the claims check included) and write the page.

    python -m harness.bench.report     # prints the timings
    moe-harness bench report           # the same, through the CLI
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from reports.page.render import write_report
from reports.records import load_records, records_frame
from reports.synthetic import synthetic_records, write_store


def bench_report_detailed(
    n_records: int = 10_000, *, from_store: bool = True, out_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Time report generation over ``n_records`` synthetic records.

    ``from_store=True`` writes the records as JSON files first (untimed) and times reading
    them back; ``False`` starts from an in-memory frame. Returns seconds per phase
    (``load_s``, ``report_s``, ``total_s``), the page size (``size_mb``) and the number of
    records. ``out_dir`` keeps the store and page (a temporary folder otherwise).
    """
    records = synthetic_records(n_records, seed=seed)
    with tempfile.TemporaryDirectory(prefix="moe-report-bench-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        out = root / "report.html"
        if from_store:
            runs = write_store(records, root / "runs")
            start = time.perf_counter()
            df = load_records(runs)
        else:
            start = time.perf_counter()
            df = records_frame(records)
        loaded = time.perf_counter()
        write_report(df, out, study_name="synthetic-bench", pending=0, paper=True)
        done = time.perf_counter()
        return {
            "records": float(n_records),
            "load_s": loaded - start,
            "report_s": done - loaded,
            "total_s": done - start,
            "size_mb": out.stat().st_size / 1e6,
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 10_000
    result = bench_report_detailed(n)
    print(
        f"report over {n:,} records: {result['total_s']:.2f} s "
        f"(load {result['load_s']:.2f} s, aggregate + figures + page {result['report_s']:.2f} s; "
        f"page {result['size_mb']:.1f} MB); target < 5 s on 2 cores"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
