"""A tuning study's storage opens in optuna-dashboard: SQLite, a journal file, PostgreSQL.

The tuner (``runners.tune``, with a stand-in for training so that trials take no time) fills
each storage; ``optuna-dashboard``, launched as ``moe-harness tune --show`` prints it, serves
it on 127.0.0.1 and a free port; Debian chromium (Playwright, ``tests/fixtures/browser.py``)
finds the study, its objective names and its trials. The dashboard is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures.studies import fake_execute, tiny_tune_study, write_study

import runners.tune as T
from harness.spec.study import load

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def tuned(request, tmp_path, monkeypatch):
    """The storage URL of a tuned two-objective study ``tt``: 4 trials, one failed."""
    import harness.runtime.run

    monkeypatch.setattr(harness.runtime.run, "execute", fake_execute([]))
    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'optuna.db'}",
           "journal": lambda: f"journal:{tmp_path / 'optuna.journal'}",
           "postgres": lambda: request.getfixturevalue("pg_url")}[request.param]()
    raw = tiny_tune_study("tt")
    raw["tune"]["space"].update(slots_per_expert=[1, 2, 3])
    study = load(write_study(tmp_path, raw))
    summary = T.tune(study, results_root=tmp_path / "results", trials=4, executor="debug",
                     storage=url, show_progress=False)
    assert summary["after"]["finished"] == 4
    return url


@pytest.fixture
def dashboard(tuned, tmp_path):
    """optuna-dashboard on ``tuned``, as ``tune --show`` prints it, on 127.0.0.1."""
    command = T.dashboard_command(tuned)
    assert command[0] == "optuna-dashboard"
    command[0] = str(Path(sys.executable).parent / "optuna-dashboard")
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "w")
    server = subprocess.Popen([*command, "--server", "wsgiref", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/meta", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("optuna-dashboard did not start:\n"
                                + (tmp_path / "dashboard.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_the_tuned_study_opens_in_optuna_dashboard(dashboard, chromium_launch):
    from playwright.sync_api import sync_playwright

    with urllib.request.urlopen(f"{dashboard}/api/studies", timeout=30) as reply:
        (summary,) = json.load(reply)["study_summaries"]
    assert summary["study_name"] == "tt"
    study = f"{dashboard}/dashboard/studies/{summary['study_id']}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(**chromium_launch)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{dashboard}/dashboard")
            page.get_by_text("Direction: MAXIMIZE, MINIMIZE").wait_for(timeout=60_000)
            assert "tt" in page.inner_text("body")
            page.goto(study)  # the Pareto front, its axes named after the objectives
            page.get_by_text("Objective X:").wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "test_accuracy" in body and "gflops_per_image" in body
            page.goto(f"{study}/trials")
            page.get_by_text("4 Trials").wait_for(timeout=60_000)
            body = page.inner_text("body")
            for number in range(4):
                assert f"Trial {number}" in body
            assert "Complete" in body
        finally:
            browser.close()
