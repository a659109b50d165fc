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
