"""Tuning: the ``tune:`` schema (one clear line per mistake), trial -> RunSpec mapping,
storages, stale-trial detection, and the worker loop in-process with a fake ``execute``
(fast: no training). Real training, several workers, kills and PostgreSQL: tests/runners/tune/."""

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.studies import fake_execute, tiny_tune_study, write_study

from harness.errors import HarnessError
from harness.spec.study import load
from runners import tune as T


def write(tmp_path: Path, mutate=None, raw: dict | None = None) -> Path:
    """The tiny tune study ``tt`` (or ``raw``), its tune section changed by ``mutate``."""
    raw = raw or tiny_tune_study("tt")
    if mutate:
        mutate(raw["tune"])
    return write_study(tmp_path, raw)


def parse_err(tmp_path, mutate) -> str:
    with pytest.raises(HarnessError) as err:
        T.parse(load(write(tmp_path, mutate)))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'tt.yaml'}: tune.")
    return msg.split(": ", 1)[1]


def space(axis, value):
    return lambda t: t["space"].__setitem__(axis, value)


@pytest.mark.parametrize("mutate, expected", [
    (space("slots_per_expert", {"low": 10, "high": 8}),
     "tune.space.slots_per_expert.low: must be <= high (8), got 10"),
    (space("slots_per_expert", {"low": 0, "high": 8}),
     "tune.space.slots_per_expert.low: 0 is not a valid slots_per_expert: "
     "slots_per_expert must be > 0, got 0"),
    (space("slots_per_expert", {"lo": 1, "high": 8}),
     "tune.space.slots_per_expert.lo: unknown key 'lo'; allowed: type, low, high, log, step, "
     "choices, blocks"),
    (space("slots_per_expert", {"low": 1.5, "high": 8}),
     "tune.space.slots_per_expert.type: slots_per_expert is a whole number"),
    (space("slots", {"low": 1, "high": 8}), "tune.space.slots: unknown axis 'slots'; allowed:"),
    (space("lr", {"low": 0.0, "high": 0.1, "log": True}),
     "tune.space.lr.low: a log axis needs low > 0, got 0"),
    (space("lr", {"low": 0.1}), "tune.space.lr.high: missing"),
    (space("lr", "big"), "tune.space.lr: expected {low: .., high: ..}"),
    (space("k", {"type": "per_block"}), "tune.space.k.type: per_block is for moe_layers only"),
    (space("k", {"low": 1, "high": 2}), "tune.space.k: router 'soft' ignores k"),
    (space("router", {"low": 1, "high": 2}), "tune.space.router.type: router takes names"),
    (space("moe_layers", {"choices": []}), "tune.space.moe_layers.choices: a categorical axis"),
    (space("moe_layers", ["last_half", "last:9"]),
     "tune.space.moe_layers.choices.1: 'last:9' is not a valid moe_layers: moe_layers 'last:9' "
     "needs 1 <= N <= depth 4"),
    (lambda t: t.update(pruner={"name": "median"}),
     "tune.pruner.name: Optuna prunes single-objective studies only, and this study has 2 "
     "objectives (test_accuracy, gflops_per_image)"),
    (lambda t: t["objectives"].append({"metric": "acc", "direction": "maximize"}),
     "tune.objectives.2.metric: unknown metric 'acc'; allowed: test_accuracy"),
    (lambda t: t["objectives"][0].update(direction="max"),
     "tune.objectives.0.direction: Input should be 'maximize' or 'minimize' (got 'max')"),
    (lambda t: t.pop("objectives"), "tune.objectives: missing (required)"),
    (lambda t: t.update(trails=3), "tune.trails: unknown key 'trails'; allowed: space,"),
    (lambda t: t.update(constraints=[{"metric": "gflops_per_image"}]),
     "tune.constraints.0.max: give max and/or min"),
    (lambda t: t.update(heartbeat={"interval_s": 10, "grace_s": 5}),
     "tune.heartbeat.grace_s: must be >= 2 * interval_s (20), got 5"),
    (lambda t: t.update(storage="foo.db"), "tune.storage: 'foo.db': expected an SQLAlchemy URL"),
    (lambda t: t["objectives"].__setitem__(1, {"metric": "train_images_per_s",
                                               "direction": "maximize"}),
     "tune.objectives.1.metric: train_images_per_s needs measure.enabled and measure.time"),
])
def test_tune_section_errors_are_one_clear_line(tmp_path, mutate, expected):
    assert parse_err(tmp_path, mutate).startswith(expected)


def test_pruner_metric_is_one_training_reports(tmp_path):
    def mutate(t):
        t["objectives"] = t["objectives"][:1]
        t["pruner"] = {"name": "median", "metric": "gflops_per_image"}
    assert parse_err(tmp_path, mutate).startswith(
        "tune.pruner.metric: Input should be 'train_loss', 'test_accuracy' or 'test_loss'")


def test_reporter_reports_a_smoothed_value_in_the_objective_direction():
    from harness.runtime.run import Pruned

    cfg = T.TuneConfig.model_validate({
        "space": {}, "objectives": [{"metric": "test_accuracy", "direction": "maximize"}],
        "pruner": {"name": "median", "smoothing": 0.5}})
    reported, verdicts = [], iter([False, True])
    trial = SimpleNamespace(report=lambda v, s: reported.append((s, v)),
                            should_prune=lambda: next(verdicts))
    on_progress = T.reporter(trial, cfg)
    on_progress({"step": 2, "steps": 10, "loss": 2.0})
    with pytest.raises(Pruned) as stop:
        on_progress({"step": 4, "steps": 10, "loss": 1.0})
    assert reported == [(2, -2.0), (4, -1.5)]  # loss, negated: higher is better for accuracy
    assert stop.value.step == 4


def test_cli_prints_the_error_on_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, space("slots_per_expert", {"low": 10, "high": 8}))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "tune", str(path), "--trials",
                           "2", "--results", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: {path}: tune.space.slots_per_expert.low: must be <= "
                                   f"high (8), got 10")


def test_shorthands_and_trial_to_spec(tmp_path):
    study = load(write(tmp_path, lambda t: t["space"].update(num_experts=[2, 4])))
    cfg = T.parse(study)
    assert cfg.space["num_experts"].type == "categorical"
    assert cfg.space["slots_per_expert"].type == "int"
    assert cfg.space["lr"].type == "float" and cfg.space["lr"].log
    params = {"slots_per_expert": 2, "num_experts": 4, "lr": 1e-3,
              "moe_block_0": True, "moe_block_1": False, "moe_block_2": False,
              "moe_block_3": True}
    spec = T.trial_spec(study, cfg, params)
    assert (spec.router, spec.num_experts, spec.slots_per_expert, spec.moe_layers) == \
        ("soft", 4, 2, "0,3")
    assert spec.train.lr == 1e-3 and spec.train.steps == 5  # fixed/train values kept
    # no block on: the dense backbone
    off = T.trial_spec(study, cfg, {**params, "moe_block_0": False, "moe_block_3": False})
    assert off.router == "dense" and off.num_experts is None
    assert "moe_layers=none (dense)" in T.describe_params(study, cfg, {**params,
                                                                       "moe_block_0": False,
                                                                       "moe_block_3": False})


def test_placement_choices_and_grid_base(tmp_path):
    raw = tiny_tune_study("tt", grid={"router": ["soft", "dense"]})
    del raw["fixed"]["router"]
    study = load(write(tmp_path, lambda t: t["space"].__setitem__(
        "moe_layers", [[2, 3], "last:1", "every:2"]), raw=raw))
    cfg = T.parse(study)
    assert T.base_point(study)["router"] == "soft"  # the first grid value is the base
    assert cfg.space["moe_layers"].choices == [[2, 3], "last:1", "every:2"]
    spec = T.trial_spec(study, cfg, {"slots_per_expert": 1, "lr": 1e-3, "moe_layers": "2,3"})
    assert spec.moe_layers == "2,3"


def test_storage_urls(tmp_path):
    assert T.storage_kind("journal:/x/y.journal") == "journal"
    assert T.storage_kind("/x/y.journal") == "journal"
    assert T.storage_kind("postgresql+psycopg2://u:secret@h:5432/db") == "rdb"
    with pytest.raises(HarnessError, match="expected an SQLAlchemy URL"):
        T.storage_kind("y.db")
    assert T.without_password("postgresql+psycopg2://u:secret@h:5432/db") == \
        "postgresql+psycopg2://u@h:5432/db"
    study = load(write(tmp_path))
    cfg = T.parse(study)
    d = tmp_path / "r" / "tt"
    assert T.resolve_storage(study, cfg, d, None, "local") == f"sqlite:///{d}/tune/optuna.db"
    assert T.resolve_storage(study, cfg, d, None, "slurm") == f"journal:{d}/tune/optuna.journal"
    T.record_storage(d, "postgresql+psycopg2://u:secret@h:5432/db")
    assert T.resolve_storage(study, cfg, d, None, "local") == "postgresql+psycopg2://u@h:5432/db"
    assert "secret" not in (d / "tune" / "storage.json").read_text()


def _trial(**attrs):
    start = attrs.pop("start", time.time())
    return SimpleNamespace(user_attrs=attrs, datetime_start=datetime.fromtimestamp(start))


def test_stale_reason(tmp_path):
    import os
    import socket

    host, now = socket.gethostname(), time.time()
    me = dict(worker_host=host, worker_pid=os.getpid(), worker_started=T.proc_start(os.getpid()))
    assert T.stale_reason(_trial(**me, heartbeat_at=now), 30) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = dict(worker_host=host, worker_pid=dead.pid, heartbeat_at=now)
    assert "is gone" in T.stale_reason(_trial(**gone), 30)
    # the same pid, another process (pid reuse): gone too
    assert "is gone" in T.stale_reason(_trial(**{**me, "worker_started": "1"}, heartbeat_at=now),
                                       30)
    # another host: only the heartbeat's age counts
    far = dict(worker_host="elsewhere", worker_pid=1)
    assert T.stale_reason(_trial(**far, heartbeat_at=now - 10, start=now - 100), 30) is None
    assert "no heartbeat for" in T.stale_reason(
        _trial(**far, heartbeat_at=now - 60, start=now - 100), 30)
    # a freshly popped retry still carries its dead predecessor's pid: not stale yet
    assert T.stale_reason(_trial(**gone | {"heartbeat_at": now - 50}, start=now), 30) is None


def test_pareto_and_constraints():
    mk = lambda n, a, g: SimpleNamespace(number=n, values=[a, g])  # noqa: E731
    trials = [mk(0, 0.5, 1.0), mk(1, 0.6, 2.0), mk(2, 0.4, 1.5), mk(3, 0.6, 1.0)]
    front = T.pareto(trials, ["maximize", "minimize"])
    assert [t.number for t in front] == [3]
    trials.append(mk(4, 0.7, 3.0))
    assert [t.number for t in T.pareto(trials, ["maximize", "minimize"])] == [4, 3]
    cfg = T.TuneConfig.model_validate({
        "space": {}, "objectives": [{"metric": "test_accuracy", "direction": "maximize"}],
        "constraints": [{"metric": "gflops_per_image", "max": 0.5},
                        {"metric": "test_accuracy", "min": 0.2}]})
    assert T.constraint_values({"gflops_per_image": 0.3, "test_accuracy": 0.1}, cfg) == \
        pytest.approx({"gflops_per_image<=0.5": -0.2, "test_accuracy>=0.2": 0.1})


# --- the worker loop, in process, with a fake execute ----------------------------------------
def test_worker_loop_counts_reuses_and_records(tmp_path, monkeypatch):
    import harness.runtime.run

    calls: list[str] = []
    monkeypatch.setattr(harness.runtime.run, "execute", fake_execute(calls))
    study = load(write(tmp_path, lambda t: t["space"].update(
        slots_per_expert=[1, 2, 3], moe_layers=["last:1", "last_half"],
        lr=[0.001]) or t.update(constraints=[{"metric": "gflops_per_image", "max": 0.015}])))
    root = tmp_path / "results"
    summary = T.tune(study, results_root=root, trials=8, executor="debug", show_progress=False)
    c = summary["after"]
    assert c["finished"] == 8 and c["running"] == 0 and c["waiting"] == 0
    ostudy = T.load_tuning(study, root)[1]
    trials = ostudy.get_trials()
    assert [t.number for t in trials] == list(range(8))
    from harness.results.store import Store

    store = Store(root, "tt")
    for t in trials:
        record = store.read(t.user_attrs["run_id"])
        assert record is not None  # every trial has a record
        if t.state.name == "FAIL":
            assert t.user_attrs["outcome"] == "failed" and record["status"] == "failed"
        else:
            assert set(t.constraints) == {"gflops_per_image<=0.015"}
    # repeated parameters reuse an ok record instead of training again (6 distinct runs here)
    ok_calls = [c for c in calls if store.read(c)["status"] == "ok"]
    assert len(ok_calls) == len(set(ok_calls))
    assert any("reused_record" in t.user_attrs for t in trials)
    # a second call continues the same study
    summary = T.tune(study, results_root=root, trials=10, executor="debug", show_progress=False)
    assert summary["before"]["finished"] == 8 and summary["after"]["finished"] == 10
    assert len(T.load_tuning(study, root)[1].get_trials()) == 10
    # --show and the report section
    from rich.console import Console

    console = Console(record=True, width=200)
    T.show(study, root, console=console)
    text = console.export_text()
    assert "Pareto set" in text and "10 trials finished" in text
    from reports.page.sections import tuning_section

    html = tuning_section(store)
    assert 'id="fig-tune-pareto"' in html and 'id="fig-tune-history-test_accuracy"' in html


def test_directions_must_match_the_stored_study(tmp_path, monkeypatch):
    import harness.runtime.run

    monkeypatch.setattr(harness.runtime.run, "execute", fake_execute([]))
    root = tmp_path / "results"
    study = load(write(tmp_path))
    T.tune(study, results_root=root, trials=1, executor="debug", show_progress=False)
    single = load(write(tmp_path, lambda t: t.update(objectives=t["objectives"][:1])))
    with pytest.raises(HarnessError, match="holds study 'tt' with directions"):
        T.tune(single, results_root=root, trials=2, executor="debug", show_progress=False)


def test_surplus_trial_is_refused():
    """Two workers racing for the last trial: the later one fails as surplus, not counted."""
    from optuna.trial import TrialState as S

    mk = lambda n, state, **a: SimpleNamespace(number=n, state=state, user_attrs=a)  # noqa
    others = [mk(0, S.COMPLETE), mk(1, S.RUNNING), mk(2, S.FAIL), mk(3, S.FAIL, outcome="failed")]
    study = SimpleNamespace(get_trials=lambda deepcopy=False: [*others, mk(4, S.RUNNING)])
    attrs = {}
    trial = SimpleNamespace(number=4, study=study,
                            set_user_attr=lambda k, v: attrs.__setitem__(k, v))
    T.check_surplus(trial, trials=4)  # 0, 1, 3 and 4 make four: fine
    with pytest.raises(T.Surplus):
        T.check_surplus(trial, trials=3)
    assert attrs["outcome"] == "surplus"
    assert T.counts([*others])["finished"] == 2 and T.counts(others)["stale"] == 1


def test_the_report_reads_the_tuning_summary_in_the_store(tmp_path, monkeypatch):
    """Each tune call leaves its summary in the store; the report's tuning section is drawn
    from that file alone (the Optuna storage may be gone, or on a server out of reach)."""
    import harness.runtime.run
    from harness.results.store import Store
    from harness.results.tune_summary import read_summary, summary_path
    from reports.page.sections import tuning_section

    monkeypatch.setattr(harness.runtime.run, "execute", fake_execute([]))
    root = tmp_path / "results"
    study = load(write(tmp_path, lambda t: t["space"].update(slots_per_expert=[1, 2, 3])))
    T.tune(study, results_root=root, trials=5, executor="debug", show_progress=False)
    store = Store(root, "tt")
    summary = read_summary(store.dir)
    assert summary.counts["finished"] == 5 and len(summary.trials) == 5
    assert summary.metrics == ["test_accuracy", "gflops_per_image"] and summary.multi
    ostudy = T.load_tuning(study, root)[1]
    assert summary.best == [t.number for t in T.best_trials(ostudy, T.parse(study))]
    assert summary.storage == f"sqlite:///{store.dir / 'tune' / 'optuna.db'}"
    (store.dir / "tune" / "optuna.db").unlink()
    html = tuning_section(store)
    assert 'id="fig-tune-pareto"' in html and 'id="fig-tune-history-gflops_per_image"' in html
    assert f"{summary.counts['finished']} trials finished" in html
    summary_path(store.dir).write_text('{"study": "tt"}')
    with pytest.raises(HarnessError) as err:
        tuning_section(store)
    assert str(err.value).startswith(f"{summary_path(store.dir)}: storage: Field required")
    assert "\n" not in str(err.value)
    assert tuning_section(Store(root, "never-tuned")) is None
