"""`status` and `report` on stores with pending runs and with files that are not valid
records: every run shows, invalid files as problem rows, nothing crashes."""

import textwrap

import pytest
from rich.console import Console

from harness.results.store import Store
from harness.spec.study import load
from harness.views.runs import status_table
from reports.build import build_report

STUDY = """
name: p
data: {name: synthetic, image_size: 16}
fixed: {model: vit-w32d2h2m64/4}
grid: {router: [dense, soft], num_experts: [4]}
"""

BAD = {
    "latin": b"\xff\xfe not utf-8",
    "alist": b"[1, 2]",
    "typed": b'{"run_id": "typed", "status": "ok", "test_accuracy": "high"}',
}


@pytest.fixture
def study_and_store(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(STUDY))
    study = load(path)
    return study, Store(tmp_path / "results", study.name)


def render(table) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_status_of_a_study_with_pending_runs(study_and_store):
    study, store = study_and_store
    text = render(status_table(study, store))
    assert "p: 2 pending" in text
    done = study.expand()[0]
    store.write({**done.flat(), "status": "ok", "test_accuracy": 0.5})
    text = render(status_table(study, store, live={}))
    assert "1 ok, 1 pending" in text and "0.500" in text


def test_status_and_report_show_invalid_records_as_problems(study_and_store, tmp_path):
    study, store = study_and_store
    store.write({**study.expand()[0].flat(), "status": "ok", "test_accuracy": 0.5})
    for name, content in BAD.items():
        (store.runs_dir / f"{name}.json").write_bytes(content)
    text = render(status_table(study, store))
    assert "3 problem" in text
    assert "latin.json: not a JSON record" in text
    assert "alist.json: expected a JSON object" in text
    assert "typed.json: test_accuracy: expected a number" in text
    page = build_report(study, store, tmp_path / "r.html").read_text()
    for name in BAD:
        assert f"{name}.json" in page
