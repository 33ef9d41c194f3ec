"""Study files: grid expansion, collapse rules, run ids, and one clear error per mistake."""

import json
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec.study import RunSpec, json_schema, load

BASE = """
name: t
data: {name: synthetic, image_size: 16, num_classes: 10}
train: {steps: 10, batch_size: 8}
"""


def write(tmp_path: Path, body: str, name="study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(body))
    return path


def test_axes_a_router_does_not_use_collapse(tmp_path):
    study = load(write(tmp_path, """
        grid:
          model: [vit-w32d4h4m64/4]
          router: [dense, soft, tokens_choice, experts_choice]
          num_experts: [4, 8]
          slots_per_expert: [1, 2]
          k: [1, 2]
          seed: [0, 1]
    """))
    specs = study.expand()
    by_router = {}
    for s in specs:
        by_router.setdefault(s.router, []).append(s)
    # dense: seeds only; soft: experts x slots x seeds; tokens: experts x k x seeds; experts: e x s
    assert {r: len(v) for r, v in by_router.items()} == {
        "dense": 2, "soft": 8, "tokens_choice": 8, "experts_choice": 4}
    assert len({s.run_id for s in specs}) == len(specs) == 22
    dense = by_router["dense"][0]
    assert (dense.num_experts, dense.slots_per_expert, dense.k, dense.moe_layers) == (
        None, None, None, "none")
    assert all(s.k is None for s in by_router["soft"])
    assert all(s.slots_per_expert is None for s in by_router["tokens_choice"])


def test_exclude_rules(tmp_path):
    study = load(write(tmp_path, """
        grid:
          model: [vit-w32d4h4m64/4]
          router: [soft, tokens_choice]
          num_experts: [4, 8]
        exclude:
          - {router: tokens_choice, num_experts: 8}
          - {router: soft, num_experts: [4]}
    """))
    assert [(s.router, s.num_experts) for s in study.expand()] == [
        ("soft", 8), ("tokens_choice", 4)]


def test_run_id_is_stable_across_key_order_and_study_name(tmp_path):
    a = load(write(tmp_path, """
        grid: {model: [vit-w32d4h4m64/4], router: [soft], num_experts: [4]}
        train: {steps: 10, batch_size: 8, lr: 0.002}
    """, "a.yaml"))
    b_path = tmp_path / "b.yaml"
    b_path.write_text(textwrap.dedent("""
        train: {lr: 0.002, batch_size: 8, steps: 10}
        grid: {num_experts: [4], router: [soft], model: [vit-w32d4h4m64/4]}
        data: {num_classes: 10, image_size: 16, name: synthetic}
        name: renamed
    """))
    b = load(b_path)
    assert a.expand()[0].run_id == b.expand()[0].run_id
    assert len(a.expand()[0].run_id) == 12
    spec = a.expand()[0]
    assert RunSpec.model_validate_json(spec.model_dump_json()).run_id == spec.run_id


def test_train_axes_and_set_overrides(tmp_path):
    path = write(tmp_path, """
        grid: {model: [vit-w32d4h4m64/4], lr: [0.001, 0.01]}
    """)
    study = load(path, ["train.steps=25", "data.num_classes=7"])
    assert [s.train.lr for s in study.expand()] == [0.001, 0.01]
    assert {s.train.steps for s in study.expand()} == {25}
    assert study.data.num_classes == 7
    with pytest.raises(HarnessError, match=r"train\.steps: Input should be greater than 0"):
        load(path, ["train.steps=-1"])


def test_profiles(tmp_path):
    path = write(tmp_path, """
        grid: {model: [vit-w32d4h4m64/4]}
        profiles:
          laptop: {train: {steps: 5}}
          cluster: {train: {steps: 5000}, data: {image_size: 224}, grid: {model: [vit-s/16]}}
    """)
    assert load(path).expand()[0].train.steps == 5  # the first profile is the default
    cluster = load(path, profile="cluster").expand()[0]
    assert (cluster.train.steps, cluster.model, cluster.data.image_size) == (5000, "vit-s/16", 224)
    with pytest.raises(HarnessError, match="profile 'gpu' not found; allowed: laptop, cluster"):
        load(path, profile="gpu")


BAD = [
    ("grid: [unclosed", r"line \d+, column \d+: malformed YAML"),
    ("grdi: {model: [vit-s/16]}", r"grdi: unknown key 'grdi'; allowed: name, description, data"),
    ("train: {stpes: 3}\ngrid: {model: [vit-s/16]}",
     r"train\.stpes: unknown key 'stpes'; allowed: steps"),
    ("train: {steps: many}\ngrid: {model: [vit-s/16]}",
     r"train\.steps: Input should be a valid integer"),
    ("grid: {model: [vit-w32d4h4m64/4], router: [soft], slots_per_expert: [0]}",
     r"router=soft, slots_per_expert=0: slots_per_expert must be > 0"),
    ("grid: {model: [vit-w32d4h4m64/4], router: [tokens_choice], num_experts: [2], k: [3]}",
     r"k=3: k must lie in 1\.\.num_experts \(2\)"),
    ("grid: {model: [vit-w32d4h4m64/4], router: [soft], moe_layers: ['last:9']}",
     r"moe_layers=last:9: moe_layers 'last:9' needs 1 <= N <= depth 4"),
    ("grid: {model: [vit-w32d4h4m64/4], router: [soft], moe_layers: [[1, 7]]}",
     r"block indices must lie in 0\.\.3"),
    ("grid: {model: [vit-zz/4]}", r"model=vit-zz/4: unknown model size 'zz'"),
    ("grid: {model: [resnet]}", r"model 'resnet': expected a backbone"),
    ("grid: {model: [vit-w32d4h4m64/4], router: [switch]}",
     r"unknown router 'switch'; allowed: dense"),
    ("grid: {model: [vit-w32d4h4m64/4], expert: [3]}",
     r"grid: unknown axis 'expert'; allowed: model"),
    ("grid: {router: [dense]}", r"model: missing"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(HarnessError) as err:
        load(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(str(path))
    assert __import__("re").search(message, text), text


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(HarnessError, match="must be a mapping"):
        load(path)
    with pytest.raises(HarnessError, match="no such study file"):
        load(tmp_path / "nope.yaml")


def test_name_must_be_a_safe_folder_name(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: ../../etc\ngrid: {model: [vit-s/16]}\n")
    with pytest.raises(HarnessError, match="name: must be letters"):
        load(path)


def test_json_schema_is_exported_and_current():
    schema = json_schema()
    assert {"name", "data", "train", "grid", "exclude", "executor", "profiles"} <= set(
        schema["properties"])
    committed = Path(__file__).parents[2] / "studies" / "study.schema.json"
    assert json.loads(committed.read_text()) == schema, "run: moe-harness schema --out " + str(
        committed)


def test_every_study_file_validates():
    for path in sorted((Path(__file__).parents[2] / "studies").rglob("*.yaml")):
        assert load(path).expand(), path
