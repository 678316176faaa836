"""The recipe of a folder's model: it rebuilds exactly the model an unlearning saved and the model a pruning
run kept, from the original model, and refuses a step the folder cannot rebuild."""

import shutil

import pytest
import torch
from conftest import build_tiny_batch, one_error_line, save_tiny_model
from safetensors.torch import load_file, save_file

from selprune.arch import neuron_group
from selprune.errors import UserError
from selprune.models import load_model
from selprune.pruning import apply
from selprune.recipe import recipe_of
from selprune.rundir import RunFolder


@pytest.fixture(scope="module")
def unlearned(make_unlearning, tmp_path_factory):
    return make_unlearning(tmp_path_factory.mktemp("recipe") / "graddiff")


def loaded(path):
    return load_model(str(path), dtype="float32", device="cpu")[0].eval()


def logits(model):
    ids, mask = build_tiny_batch(length=12)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_the_recipe_of_an_unlearning_is_the_model_it_saved(unlearned):
    recipe = recipe_of(unlearned)
    assert (recipe.step, recipe.mask, recipe.weights) == (4, None, unlearned / "model")
    original = loaded(recipe.model)
    rebuilt, saved = recipe.build(original), loaded(unlearned / "model")
    assert not torch.equal(logits(original), logits(saved)), "the unlearning changed nothing: no test"
    assert torch.equal(logits(rebuilt), logits(saved))
    for name, value in saved.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    assert torch.equal(logits(original), logits(loaded(recipe.model))), "build changed the original model"


def test_the_recipe_of_a_pruning_run_is_its_mask_on_the_original(finished_run):
    folder = RunFolder(finished_run)
    original = loaded(folder.read_config().model)
    for step in (1, 3):
        recipe = recipe_of(finished_run, step)
        assert torch.equal(recipe.mask, folder.record().mask(range(1, step + 1))) and recipe.mask.any()
        by_hand = loaded(folder.read_config().model)
        apply(neuron_group(by_hand, folder.read_config().group), recipe.mask)
        assert torch.equal(logits(recipe.build(original)), logits(by_hand))
    kept = recipe_of(finished_run)  # the step the run keeps, whose model it saved
    assert kept.step == 3 and torch.equal(logits(kept.build(original)), logits(loaded(finished_run / "model")))


def test_a_recipe_applied_in_place_step_after_step_equals_building_each(finished_run):
    """inspect makes each step's model from the one before, in place; relearn builds each from the original."""
    original = loaded(RunFolder(finished_run).read_config().model)
    model = loaded(RunFolder(finished_run).read_config().model)
    for step in (1, 2, 3):
        recipe = recipe_of(finished_run, step)
        assert torch.equal(logits(recipe.apply(model)), logits(recipe.build(original)))


def test_a_step_the_folder_cannot_rebuild_is_refused(unlearned, finished_run, tmp_path):
    with pytest.raises(UserError, match="one model, the checkpoint it kept at step 4, not 2"):
        recipe_of(unlearned, 2)
    with pytest.raises(UserError, match="pruning steps 1 to 3, not 9"):
        recipe_of(finished_run, 9)
    with pytest.raises(UserError, match="not a selprune run folder"):
        recipe_of(tmp_path)


def test_an_unfinished_unlearning_has_no_model_to_rebuild(unlearned, tmp_path):
    copy = shutil.copytree(unlearned, tmp_path / "copy")
    (copy / "state" / "result.json").unlink()
    with pytest.raises(UserError, match="has not finished: finish it with selprune unlearn --resume"):
        recipe_of(copy)


def test_a_mask_of_another_models_shape_is_refused(finished_run):
    recipe = recipe_of(finished_run)
    wider = recipe.pruned_as(torch.zeros(recipe.mask.shape[0], recipe.mask.shape[1] + 1, dtype=torch.bool))
    with pytest.raises(UserError, match="give the model it pruned"):
        wider.build(loaded(RunFolder(finished_run).read_config().model))


def test_a_saved_weight_of_another_shape_is_refused_in_one_line(unlearned, tmp_path):
    copy = shutil.copytree(unlearned, tmp_path / "copy")
    weights = load_file(copy / "model" / "model.safetensors")
    name = next(n for n, value in sorted(weights.items()) if value.dim() == 2)
    weights[name] = weights[name][:-1].contiguous()  # the right name, one row short
    save_file(weights, copy / "model" / "model.safetensors", metadata={"format": "pt"})
    recipe = recipe_of(copy)
    with pytest.raises(UserError, match=f"holds weights of another shape than this model's \\({name} "):
        recipe.build(loaded(recipe.model))


def test_an_unlearning_records_its_model_and_another_model_at_that_path_is_refused(make_unlearning, tmp_path,
                                                                                    capsys):
    save_tiny_model("llama", tmp_path / "m")
    folder = make_unlearning(tmp_path / "unlearned", model=str(tmp_path / "m"), steps=2)
    assert (folder / "state" / "model.json").is_file()
    shutil.rmtree(tmp_path / "m")
    save_tiny_model("llama", tmp_path / "m", seed=1)  # another model of the same shape, at the same path
    for argv in (["relearn", str(folder), "--max-steps", "1", "--batch-size", "2", "--chunk-len", "16",
                  "--relearn-tokens", "96", "--eval-tokens", "64", "--device", "cpu", "--quiet"],
                 ["inspect", str(folder), "--prompts", "1", "--functions", "0", "--no-lens", "--quiet"]):
        one_error_line(capsys, argv, "is not the model", "was made with")
    assert not (folder / "relearn").exists() and not (folder / "inspect").exists()
