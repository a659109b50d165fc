"""The paper's recipes as the authors ran them."""
import pytest

from experiments import recipes
from tnet_tf import training


def test_imagenet_baseline_is_the_200_epoch_schedule_stopped_after_175():
    # "We early-stop after 175 epochs": the learning rate drops at epoch 160 of
    # the 200-epoch schedule, and training ends 15 epochs after the drop.
    recipe, steps = recipes.IMAGENET["baseline"], 10
    schedule = training.make_optimizer(recipe.learning_rate, steps * recipe.epochs)._learning_rate
    rates = [float(schedule(epoch * steps)) for epoch in (159, 160, 174)]
    assert rates == pytest.approx([1e-4, 1e-5, 1e-5])
    assert recipe.training_epochs == 175
    assert recipes.IMAGENET["train"].training_epochs == recipes.IMAGENET["train"].epochs == 200
    assert recipe.replace(epochs=2).training_epochs == 2


def test_fine_grained_runs_use_the_contrastive_loss_and_the_others_do_not():
    for table in (recipes.CUB, recipes.NABIRDS):
        for recipe in table.values():          # TNet and the EfficientNet baseline alike
            assert (recipe.contrastive_weight, recipe.contrastive_margin) == (100.0, 0.4)
    for table in (recipes.FMOW, recipes.IMAGENET, recipes.DIGITS):
        assert all(recipe.contrastive_weight == 0 for recipe in table.values())


def test_every_recipe_field_outside_the_stage_identity_is_a_typed_flag():
    import dataclasses

    from absl import flags

    from experiments import runner

    values = flags.FlagValues()
    runner._define_recipe_flags(values)
    names = {field.name for field in dataclasses.fields(recipes.Recipe)}
    assert set(values) == (names - set(runner.STAGE_FIELDS)) | set(runner.MODEL_FLAGS)
    assert "model_overrides" not in values and "dropout" not in names   # a model flag
    values(["prog", "--noaugment", "--stop_after_epochs=3", "--spatial_dropout=0.25",
            "--locations=2,1", "--lr_schedule=cosine", "--contrastive_weight=100"])
    assert (values.augment, values.stop_after_epochs, values.spatial_dropout) == (False, 3, 0.25)
    assert (values.locations, values.lr_schedule, values.contrastive_weight) == \
        ("2,1", "cosine", 100.0)
    assert values.learning_rate is None and values.bbox_crops is None   # not given: the recipe's
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--epochs=many"])
