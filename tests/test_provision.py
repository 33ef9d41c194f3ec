"""tests/provision.sh, the one script that installs the integration tests' Debian packages
(CI and the fixtures both call it): run against stand-ins for dpkg-query, apt-get and id."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import PROVISION, provision

FAKES = {
    # installed: the packages named in $INSTALLED
    "dpkg-query": '[[ " $INSTALLED " == *" ${@: -1} "* ]] && echo "install ok installed" '
                  '|| exit 1',
    # each call logged; fails while $APT_FAILS (a count in a file) is above zero
    "apt-get": 'echo "$*" >> "$APT_LOG"; n=$(cat "$APT_FAILS" 2>/dev/null || echo 0); '
               'if ((n > 0)); then echo $((n - 1)) > "$APT_FAILS"; exit 100; fi',
    "id": 'echo "$UID_IS"',
}


@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "INSTALLED": "", "UID_IS": "0",
           "APT_LOG": str(tmp_path / "apt.log"), "APT_FAILS": str(tmp_path / "fails")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def run(*components: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PROVISION), *components], capture_output=True, text=True,
                          timeout=60)


def apt_calls(folder: Path) -> list[str]:
    log = folder / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_to_do_when_installed_even_without_root(fake_debian, monkeypatch):
    monkeypatch.setenv("INSTALLED", "chromium postgresql")
    monkeypatch.setenv("UID_IS", "1000")
    proc = run("chromium", "postgresql")
    assert proc.returncode == 0, proc.stderr
    assert apt_calls(fake_debian) == []
    assert provision("chromium") is None


def test_installs_only_what_is_missing_without_recommends(fake_debian, monkeypatch):
    monkeypatch.setenv("INSTALLED", "munge slurmd")
    proc = run("slurm")
    assert proc.returncode == 0, proc.stderr
    assert apt_calls(fake_debian) == [
        "-q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends slurmctld "
        "slurm-client"]


def test_all_names_every_component_daemons_without_recommends(fake_debian):
    assert run("all").returncode == 0
    lean, full = apt_calls(fake_debian)
    assert lean.split("--no-install-recommends ")[1].split() == [
        "postgresql", "slurmctld", "slurmd", "slurm-client", "munge", "mariadb-server",
        "slurmdbd"]
    assert full.split("install -y ")[1].split() == ["chromium", "dataset-fashion-mnist"]


def test_stale_package_lists_are_refreshed_once(fake_debian):
    (fake_debian / "fails").write_text("1")
    proc = run("fashion-mnist")
    assert proc.returncode == 0, proc.stderr
    assert [call.split()[-1] for call in apt_calls(fake_debian)] == [
        "dataset-fashion-mnist", "update", "dataset-fashion-mnist"]


def test_a_failing_apt_get_is_an_error(fake_debian):
    (fake_debian / "fails").write_text("5")
    proc = run("chromium")
    assert proc.returncode == 1
    assert "apt-get install chromium failed" in proc.stderr


def test_without_root_it_says_why_and_the_fixtures_skip(fake_debian, monkeypatch):
    monkeypatch.setenv("UID_IS", "1000")
    proc = run("postgresql")
    assert proc.returncode == 3 and apt_calls(fake_debian) == []
    assert provision("postgresql") == ("missing Debian packages postgresql; installing them "
                                       "needs root: apt-get install postgresql")


def test_unknown_component(fake_debian):
    proc = run("chromium", "firefox")
    assert proc.returncode == 2
    assert "unknown component 'firefox'; allowed: postgresql chromium slurm" in proc.stderr
