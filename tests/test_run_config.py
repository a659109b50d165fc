"""experiments/: flags read once into a frozen RunConfig, and the modules'
import structure (only downward imports, FLAGS read in one place)."""
import ast
import dataclasses
import json
import pathlib

import pytest
from absl import flags

from experiments import recipes, run_config, runner
from experiments.fmow import ENTRY as FMOW

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def read(entry, *argv, stage=None):
    values = flags.FlagValues()
    runner.define_flags(entry, default_stage=list(entry.recipes)[0], flag_values=values)
    values(["prog", *argv])
    return runner.read_flags(entry, stage, flag_values=values)


def test_flags_are_read_once_into_one_frozen_run_config():
    config = read(FMOW, "--stage=finetune_896", "--model_dir=runs/x", "--data_dir=/data",
                  "--dropout=0.25", "--backbone=b2", "--epochs=3", "--locations=2,2",
                  "--budgets=1;2,1", "--budgets=3", "--seed=7")
    assert (config.stage, config.model_dir, config.data_dir, config.seed) == \
        ("finetune_896", "runs/x", "/data", 7)
    assert (config.checkpoint_stage, config.eval_split) == ("finetune_896", "test")
    assert config.budgets == ((1,), (2, 1), (3,))
    recipe, model = config.recipe, config.model_config
    assert (recipe.epochs, recipe.locations, recipe.init_from) == (3, (2, 2), "train_448")
    assert recipe.model_overrides == {"dropout": 0.25, "backbone": {
        "stochastic_depth": 0.5, "name": "efficientnet-b2"}}
    # The model is the preset with the recipe's overrides, the flags' merged in.
    assert (model.dropout, model.input_size, model.locations) == (0.25, 896, (2, 2))
    assert (model.backbone.name, model.backbone.stochastic_depth) == ("efficientnet-b2", 0.5)
    assert model.grid_size == 3 and model.num_classes == 62
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    # The saved form restores the same recipe and model.
    saved = json.loads(json.dumps(config.to_dict()))
    assert recipes.Recipe.from_dict(saved["recipe"]) == recipe
    assert type(model).from_dict(saved["model_config"]) == model
    assert saved["budgets"] == [[1], [2, 1], [3]] and "entry" not in saved


def test_a_run_config_built_without_flags_equals_the_flags_one():
    from_flags = read(FMOW, "--stage=baseline_448", "--model_dir=m", "--spatial_dropout=0.1",
                      "--stochastic_depth=0.1", "--noaugment", "--lr_schedule=cosine")
    direct = run_config.resolve(
        FMOW, "baseline_448", "m", recipe_changes={"augment": False, "lr_schedule": "cosine"},
        model_overrides={"backbone": {"spatial_dropout": 0.1, "stochastic_depth": 0.1}})
    assert direct == from_flags
    assert direct.model_config.dropout == 0.75       # the baseline recipe's, kept
    assert direct.model_config.backbone.spatial_dropout == 0.1


def test_precision_and_xla_are_run_settings():
    config = read(FMOW, "--model_dir=m", "--mixed_precision=mixed_bfloat16", "--jit_compile")
    assert (config.mixed_precision, config.jit_compile) == ("mixed_bfloat16", True)
    assert read(FMOW, "--model_dir=m").mixed_precision is None
    with pytest.raises(flags.IllegalFlagValueError):
        read(FMOW, "--model_dir=m", "--mixed_precision=float8")
    with pytest.raises(run_config.FlagError, match="--mixed_precision: 'float8'"):
        run_config.validate(config.replace(stage="profile", mixed_precision="float8"))


def test_the_b4_backbone_brings_its_epochs_unless_they_are_given():
    assert read(FMOW, "--backbone=b4", "--model_dir=m").recipe.epochs == 125
    assert read(FMOW, "--backbone=b4", "--epochs=7", "--model_dir=m").recipe.epochs == 7


def test_smoke_shrinks_the_recipe_and_takes_the_tiny_model():
    config = read(FMOW, "--stage=finetune_896", "--smoke", "--model_dir=m")
    assert (config.recipe.input_size, config.recipe.epochs,
            config.recipe.global_batch_size) == (128, 2, 8)
    model = config.model_config
    assert (model.base_resolution, model.num_classes, model.backbone.name) == (32, 10, "compact")
    assert (model.grid_size, model.location_module) == (3, "squeeze_excitation")   # fMoW's


@pytest.mark.parametrize("argv, message", [
    (["--epochs=0"], "--epochs: 0 must be >= 1"),
    (["--global_batch_size=0"], "--global_batch_size: 0 must be >= 1"),
    (["--learning_rate=-1"], "--learning_rate: -1.0 must be > 0"),
    (["--stochastic_depth=1.5"], "--stage: invalid model for train_448: "
                                 "backbone.stochastic_depth must be a probability"),
    (["--locations=2,x"], "--locations:"),
    (["--backbone=b9"], "--backbone: 'b9' is not one of b0..b4"),
    (["--stage=evaluate", "--checkpoint_stage=nope"],
     "--checkpoint_stage: 'nope' is not a stage of fmow"),
])
def test_bad_settings_raise_a_flag_error_naming_the_flag(argv, message):
    with pytest.raises(run_config.FlagError) as error:
        read(FMOW, "--model_dir=m", *argv)
    assert str(error.value).startswith(message)


def test_validate_names_the_missing_folder_and_checkpoint(tmp_path):
    config = run_config.resolve(FMOW, "finetune_896", str(tmp_path / "run"), data_dir=None)
    with pytest.raises(run_config.FlagError, match="--data_dir: is required"):
        run_config.validate(config)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}-00000-of-00001").write_bytes(b"")
    with pytest.raises(run_config.FlagError, match="--init_checkpoint: .*train_448/final "
                                                   "does not exist"):
        run_config.validate(config.replace(data_dir=str(data)))
    evaluate = run_config.resolve(FMOW, "evaluate", str(tmp_path / "run"), data_dir=str(data))
    with pytest.raises(run_config.FlagError, match="no final checkpoint of finetune_896"):
        run_config.validate(evaluate)
    assert run_config.validate(evaluate.replace(stage="profile")).stage == "profile"
    # A budget beyond fMoW's 3x3 grid is named before anything is built.
    with pytest.raises(run_config.FlagError, match="--budgets:"):
        run_config.validate(evaluate.replace(stage="profile", budgets=((2,), (10,))))


def _imports(path: pathlib.Path):
    """The experiments modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "experiments":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("experiments.")}
    return found


def _is_command(path: pathlib.Path) -> bool:
    """Whether the module has a top-level `if __name__ == "__main__":`."""
    return any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
               for node in ast.parse(path.read_text()).body)


def test_experiments_import_only_downwards_and_read_flags_in_one_place():
    modules = {path.stem: path for path in EXPERIMENTS.glob("*.py") if path.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    order, visiting = [], set()

    def visit(name, chain):
        assert name not in visiting, f"import loop: {' -> '.join(chain + [name])}"
        if name in order:
            return
        visiting.add(name)
        for imported in sorted(graph[name]):
            visit(imported, chain + [name])
        visiting.discard(name)
        order.append(name)

    for name in sorted(modules):
        visit(name, [])
    for library in ("recipes", "run_config", "stages", "digits_report"):
        assert "runner" not in graph[library]
    entry_points = {name for name, path in modules.items() if _is_command(path)}
    assert {"fmow", "imagenet", "cub", "nabirds", "digits", "profile"} <= entry_points
    readers = {name for name, path in modules.items() if "FLAGS" in path.read_text()}
    assert readers - entry_points == {"runner"}
    # Dataset entry points define their flags when run, not when imported.
    for name in ("fmow", "imagenet", "cub", "nabirds"):
        tree = ast.parse(modules[name].read_text())
        top_level_calls = [node for node in tree.body
                           if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)]
        assert not top_level_calls, name


def test_entry_points_import_without_defining_flags():
    import importlib
    before = set(flags.FLAGS)
    for name in ("fmow", "imagenet", "cub", "nabirds", "digits"):
        assert importlib.import_module(f"experiments.{name}").ENTRY.dataset == \
            ("digits" if name == "digits" else name)
    assert set(flags.FLAGS) == before


def test_is_chief_follows_tf_config(monkeypatch):
    def chief(tf_config):
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config) if tf_config else "")
        return run_config.is_chief()

    workers = {"worker": ["a:1", "b:1"]}
    assert chief(None)
    assert chief({"cluster": workers, "task": {"type": "worker", "index": 0}})
    assert not chief({"cluster": workers, "task": {"type": "worker", "index": 1}})
    with_chief = {"chief": ["c:1"], **workers}
    assert chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})
    assert not chief({"cluster": with_chief, "task": {"type": "worker", "index": 0}})


def test_a_tpu_strategy_without_a_tpu_is_a_flag_error(tmp_path):
    from experiments import stages

    config = run_config.resolve(FMOW, "train_448", str(tmp_path), strategy="tpu")
    with pytest.raises(run_config.FlagError, match=r"--tpu: --strategy=tpu cannot reach the "
                                                   r"TPU \(none named\)"):
        stages.make_strategy(config)
