"""Every usage error, bad input and bad path ends in one line on stderr and exit 2, never a
traceback, whatever typer version (and the click it bundles) is installed."""

import subprocess
import sys
import textwrap

import pytest

from harness.cli import run_cli

QUICKSTART = "studies/quickstart.yaml"


def fails(capsys, *argv, code=2) -> str:
    assert run_cli([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "No such option: --bogus"),
    (["inspect", "vit-s/16", "--json"], "'--json' requires an argument"),
    (["run", QUICKSTART, "--max-parallel", "abc"], "--max-parallel"),
    (["run", QUICKSTART, "--max-parallel", "-3"], "greater than or equal to 1"),
    (["run", QUICKSTART, "--max-parallel", "0", "--dry-run"], "greater than or equal to 1"),
    (["run", QUICKSTART, "--executor", "nope", "--dry-run"], "--executor 'nope': allowed: local"),
    (["tune", "studies/tune_slots.yaml", "--executor", "nope"], "--executor 'nope'"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, says):
    err = fails(capsys, *argv)
    assert says in err
    assert err.count("\n") <= 2  # the usage line and the error


def test_bare_command_prints_help_and_exits_2(capsys):
    assert run_cli([]) == 2
    out = capsys.readouterr()
    assert "Commands" in out.out + out.err and "Traceback" not in out.err


def test_version(capsys):
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.startswith("moe-harness ")


def test_usage_error_in_a_fresh_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "No such option" in proc.stderr


@pytest.mark.parametrize("argv, says", [
    (["inspect", "vit-s/16", "--counter", "analytic", "--json", "{tmp}/missing/x.json"],
     "--json {tmp}/missing/x.json: no such folder"),
    (["report", QUICKSTART, "--out", "{tmp}"], "--out {tmp}: is a folder"),
    (["report", QUICKSTART, "--out", "{tmp}/nonexistent/x.html"], "no such folder"),
    (["report", QUICKSTART, "--json", "{tmp}/missing/x.json"], "--json {tmp}/missing/x.json"),
    (["plan", QUICKSTART, "--target-quality", "0.5", "--json", "{tmp}/missing/x.json"],
     "--json {tmp}/missing/x.json: no such folder"),
    (["tune", "studies/tune_slots.yaml", "--trials", "1", "--storage",
      "sqlite:///{tmp}/nonexistent/x.db"],
     "--storage sqlite:///{tmp}/nonexistent/x.db: no such folder {tmp}/nonexistent"),
    (["schema", "--out", "{tmp}"], "is a folder"),
    (["run", QUICKSTART, "--results", "{tmp}/file"], "cannot write results there"),
    (["run", QUICKSTART, "--results", "{tmp}/readonly"], "cannot write results there"),
])
def test_bad_paths_are_refused_before_anything_is_created(capsys, tmp_path, argv, says):
    (tmp_path / "file").write_text("")
    (tmp_path / "readonly").mkdir(mode=0o500)
    if run_cli(["--version"]) == 0 and _root_ignores_modes(tmp_path):
        (tmp_path / "readonly").rmdir()
        (tmp_path / "readonly").write_text("")  # root writes anywhere: a file instead
    capsys.readouterr()
    err = fails(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert says.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "missing").exists()


def _root_ignores_modes(tmp_path) -> bool:
    probe = tmp_path / "readonly" / "probe"
    try:
        probe.write_text("")
    except OSError:
        return False
    probe.unlink()
    return True


BASE = """
name: s
data: {name: synthetic, image_size: 16}
fixed: {model: vit-w32d2h2m64/4}
"""


@pytest.mark.parametrize("extra, field", [
    ("grid: {seed: [abc]}", "grid: seed: expected an integer, got 'abc'"),
    ("grid: {seed: [[1, 2]]}", "grid: seed: expected an integer, got [1, 2]"),
    ("grid: {seed: [1.5]}", "grid: seed: expected an integer, got 1.5"),
    ("grid: {num_experts: [true]}", "grid: num_experts: expected an integer, got True"),
    ("grid: {capacity_factor: [.inf]}", "grid: capacity_factor: expected a finite number"),
    ("grid: {router: [1]}", "grid: router: expected a string"),
    ("grid: {steps: [true]}", "steps: expected a value of type int, got a boolean"),
    ("grid: {batch_size: [x]}", "batch_size: Input should be a valid integer"),
    ("train: {steps: true}", "train.steps: expected a value of type int, got a boolean"),
    ("train: {lr: .inf}", "train.lr: Input should be a finite number"),
    ("train: {lr: .nan}", "train.lr: Input should be a finite number"),
    ("fixed: {model: vit-w32d2h2m64/4, router: soft, group_size: 0}", "group_size must be > 0"),
    ("fixed: {model: vit-w0d2h2m64/4}", "width must be > 0"),
    ("fixed: {model: vit-w32d0h2m64/4}", "depth must be > 0"),
    ("fixed: {model: vit-w32d2h0m64/4}", "heads must be > 0"),
    ("fixed: {model: vit-w32d2h2m64/4, attention: bogus}", "attention: unknown backend 'bogus'"),
    ("grid: {nonsense: [1]}", "grid: unknown axis 'nonsense'"),
    ("grid: {seed: []}", "grid: seed: an empty list"),
    ("tune: {space: {slots_per_expert: {choices: [1]}}, objectives: [{metric: test_accuracy,"
     " direction: maximize}], bogus: 1}", "tune.bogus: unknown key 'bogus'"),
])
def test_study_mistakes_name_the_file_and_field(capsys, tmp_path, extra, field):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(BASE) + extra + "\n")
    err = fails(capsys, "run", path, "--dry-run")
    assert err.startswith(f"error: {path}") and field in err, err
    assert err.count("\n") == 1  # one line: no warnings printed before it


def test_a_folder_is_not_a_study_file(capsys, tmp_path):
    assert "is a folder; give a study file" in fails(capsys, "run", tmp_path)


@pytest.mark.parametrize("spec, says", [
    ("vit-s/16@0", "image_size 0 must be a positive multiple"),
    ("vit-s/0", "patch_size 0"),
    ("vit-w64d4h0m256/4@16", "heads must be > 0"),
    ("vit-s/16:soft:e4:e8", "'e8' sets num_experts a second time"),
    ("vit-s/16:soft:tokens_choice", "sets router a second time"),
])
def test_model_spec_mistakes(capsys, spec, says):
    assert says in fails(capsys, "inspect", spec, "--counter", "analytic")


def _alias_bomb(key: str) -> str:
    lines = ["a0: &a0 [lol]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + f"\n{key}: *a9\n"


@pytest.mark.parametrize("text, says", [
    (textwrap.dedent(BASE) + _alias_bomb("description"), "once its aliases (*name) are expanded"),
    (textwrap.dedent(BASE) + _alias_bomb("exclude"), "once its aliases (*name) are expanded"),
    ("name: s\nfixed: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels deep"),
    (textwrap.dedent(BASE) + "grid: {seed: [" + ", ".join(map(str, range(1000))) + "], lr: ["
     + ", ".join(f"{(i + 1) / 1e4}" for i in range(1000)) + "]}\n",
     "grid: 1,000,000 points (1000 seed x 1000 lr); at most 10,000"),
    (textwrap.dedent(BASE) + "exclude: [{seed: '" + "x" * 100_000 + "'}]\n",
     "exclude: seed: expected an integer, got 'xxx"),
    (textwrap.dedent(BASE) + "description: '" + "x" * (1 << 20) + "'\n",
     "bytes; a study file is at most 1,048,576"),
])
def test_study_files_are_loaded_within_bounds(capsys, tmp_path, text, says):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    err = fails(capsys, "run", path, "--dry-run")
    assert says in err and err.startswith(f"error: {path}")
    assert len(err) < 600  # echoed values are cut, whatever their size


def test_a_study_file_that_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert f"error: {path}: not UTF-8 text (byte 9" in fails(capsys, "run", path, "--dry-run")


def test_report_without_a_finished_run_says_so_and_writes_nothing(capsys, tmp_path):
    from harness.results.store import Store

    err = fails(capsys, "report", QUICKSTART, "--results", tmp_path)
    assert "no finished run of study 'quickstart' yet (0 records" in err
    assert "moe-harness run" in err and err.count("\n") == 1
    Store(tmp_path, "quickstart").write({"run_id": "a1", "status": "failed", "error": "boom"})
    err = fails(capsys, "report", QUICKSTART, "--results", tmp_path)
    assert "(1 records, none ok, diverged or pruned)" in err
    assert not (tmp_path / "quickstart" / "report.html").exists()


def numeric_options():
    """(command words, option) of every int and float option of every command."""
    import typer

    from harness.cli import app

    def walk(command, words):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*words, name])
            return
        for param in command.params:
            kind = getattr(param, "type_descriptor", None)
            annotation = getattr(kind, "annotation", None)
            if annotation in (int, float, list[int], list[float]):
                yield words, param, annotation in (float, list[float])

    return list(walk(typer.main.get_command(app), []))


NUMERIC = numeric_options()


def test_the_walk_finds_the_numeric_options():
    names = {(" ".join(words), p.opts[0]) for words, p, _ in NUMERIC}
    assert {("bench all-to-all", "--ranks"), ("data prepare", "--workers"),
            ("plan", "--target-quality"), ("bench layers", "--experts")} <= names


@pytest.mark.parametrize("words, param, real", NUMERIC,
                         ids=[f"{' '.join(w)} {p.opts[0]}" for w, p, _ in NUMERIC])
def test_every_numeric_option_is_range_checked_at_parse_time(capsys, words, param, real):
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    assert low is not None or high is not None or param.callback is not None, \
        f"{' '.join(words)} {param.opts[0]} has no range"
    bad = [str(low - 1)] if low is not None else []
    bad += [str(high + 1)] if high is not None else []
    bad += ["nan", "inf", "-inf"] if real else []
    for value in bad:
        err = fails(capsys, *words, param.opts[0], value)
        assert f"Invalid value for '{param.opts[0]}'" in err, (value, err)
        assert err.count("\n") <= 2, err  # the usage line and the error


@pytest.mark.parametrize("argv", [
    ["bench", "all-to-all", "--device", "cuda"],
    ["bench", "layers", "--device", "cuda", "--quick"],
    ["bench", "train", "vit-s/16", "--device", "cuda"],
])
def test_cuda_on_a_machine_without_it_is_one_line(capsys, argv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = fails(capsys, *argv)
    assert err.strip().count("\n") == 0 and "--device: 'cuda' but torch sees no CUDA" in err
