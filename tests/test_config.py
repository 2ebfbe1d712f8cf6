import re
from pathlib import Path

import pytest
import yaml

from personseg.config import SourceConfig, TrainConfig, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path, data) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert cfg.model.name == "unet_mobilenet_v2"
    assert cfg.data.input_size == (320, 180)
    assert (cfg.optim.batch_size, cfg.optim.grad_accum) == (12, 8)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 1e-4)
    assert (cfg.loss.bce_weight, cfg.loss.region_weight, cfg.loss.region) == (0.6, 0.4, "tversky")
    assert (cfg.schedule.scheduler, cfg.schedule.lr_after_plateau, cfg.loss.boundary_step) == ("plateau", 3e-4, 0.01)
    assert cfg.channels_last and cfg.data.val_every == 10
    assert [s.name for s in cfg.data.sources] == ["portraits", "ccp", "hsd", "composites"]


def test_yaml_then_set_overrides_win_last(tmp_path):
    path = write_yaml(tmp_path, {"optim": {"lr": 0.01, "batch_size": 4}, "data": {"input_size": [160, 90]},
                                 "model": {"kwargs": {"alpha": 0.35}}, "amp": "bf16"})
    cfg = load_config(path, ["optim.lr=3e-4", "model.kwargs.width=8", "data.sources.1.weight=2",
                             "amp=off", "epochs=3", "schedule.patience=2"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.batch_size == 4
    assert cfg.data.input_size == (160, 90)  # a YAML list becomes the typed tuple
    assert cfg.model.kwargs == {"alpha": 0.35, "width": 8}
    assert cfg.data.sources[1].weight == 2.0 and isinstance(cfg.data.sources[1].weight, float)
    assert cfg.amp == "off"  # YAML 1.1 reads a bare `off` as False; a str field takes it back
    assert (cfg.epochs, cfg.schedule.patience) == (3, 2)


def test_yaml_sources_list_replaces_the_default(tmp_path):
    path = write_yaml(tmp_path, {"data": {"sources": [{"name": "p", "path": "portraits", "limit": 5}]}})
    cfg = load_config(path)
    assert cfg.data.sources == [SourceConfig(name="p", path="portraits", limit=5)]


@pytest.mark.parametrize("where", ["yaml", "set"])
def test_unknown_key_lists_the_valid_ones(tmp_path, where):
    if where == "yaml":
        args = (write_yaml(tmp_path, {"optim": {"lrr": 1}}), [])
    else:
        args = (None, ["optim.lrr=1"])
    with pytest.raises(KeyError) as e:
        load_config(*args)
    message = str(e.value)
    assert "optim.lrr" in message and "lr" in message and "weight_decay" in message and "grad_accum" in message


def test_bad_values_are_refused():
    with pytest.raises(TypeError, match="optim.batch_size"):
        load_config(None, ["optim.batch_size=abc"])
    with pytest.raises(ValueError, match="amp"):
        load_config(None, ["amp=fp8"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(KeyError, match="index"):
        load_config(None, ["data.sources.9.weight=1"])
    with pytest.raises(KeyError, match="valid keys"):
        load_config(None, ["data.sources.0.colour=1"])


def test_cli_reports_config_errors_without_a_traceback(capsys):
    from personseg.cli import main

    assert main(["train", str(REPO / "configs" / "smoke.yaml"), "--out", "unused", "--set", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'; valid keys under optim: lr," in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")))
def test_shipped_recipes_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg)))["model"]["name"] == cfg.model.name


@pytest.mark.parametrize("override, message", [
    ("threads=-3", "threads=-3: expected 0 or more"),
    ("max_steps=-5", "max_steps=-5: expected 0 or more"),
    ("optim.batch_size=0", "optim.batch_size=0: expected 1 or more"),
    ("data.input_size=[0, 0]", "data.input_size"),
])
def test_counts_out_of_range_are_refused(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [override])


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    from personseg.cli import main

    recipe = tmp_path / "broken.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  batch_size: [4\n")
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml: not valid YAML at line" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_recipe_with_base_lists_only_what_it_changes(tmp_path):
    (tmp_path / "stage1.yaml").write_text(
        "model: {name: unet_mobilenet_v2, kwargs: {alpha: 0.5}}\n"
        "data:\n  sources:\n    - {name: a, kind: folder, path: a, weight: 1.0}\n"
        "    - {name: b, kind: folder, path: b, weight: 2.0}\n"
        "optim: {lr: 1.0e-3}\nmax_steps: 100\n")
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "stage2.yaml").write_text(
        "base: ../stage1.yaml\n"
        "data:\n  sources:\n    b: {weight: 0.5}\n    a: null\n    c: {kind: coco, path: coco}\n"
        "optim: {lr: 3.0e-4}\n")
    stage2 = load_config(tmp_path / "next" / "stage2.yaml", ["data.sources.c.weight=4"])
    assert stage2.model.kwargs == {"alpha": 0.5} and stage2.max_steps == 100 and stage2.optim.lr == 3e-4
    assert [(s.name, s.kind, s.weight) for s in stage2.data.sources] == [("b", "folder", 0.5), ("c", "coco", 4.0)]
    assert load_config(tmp_path / "stage1.yaml").optim.lr == 1e-3  # the base itself is unchanged

    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="circle"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(KeyError, match="one of the names"):
        load_config(tmp_path / "stage1.yaml", ["data.sources.7.weight=1"])
