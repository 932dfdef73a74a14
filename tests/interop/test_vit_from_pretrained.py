"""`flaxen train vit --from`: finetuning a pretrained ViT (a transformers folder) on a folder of photos."""

import json
import warnings

import numpy as np
import pytest
from hf_reference import VIT_CONFIG, assert_parity, flaxen_outputs, hf_outputs, image_inputs

from flaxen import recipes
from flaxen.cli import main

SHORT = ["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--no-progress"]


@pytest.fixture
def pretrained_folder(tmp_path):
    """A transformers ViTForImageClassification for 8×8 images (weights nudged off their init) and its processor."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT_CONFIG, num_labels=7)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    folder = tmp_path / "pretrained"
    model.save_pretrained(folder)
    processor = transformers.ViTImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(folder)
    return folder


def test_from_a_pretrained_vit_keeps_its_backbone_and_normalisation_under_a_new_head(
    pretrained_folder, mixed_photos, tmp_path, monkeypatch
):
    import transformers

    received = {}
    monkeypatch.setattr(recipes, "_fit", lambda model, splits, *_, **__: received.update(model=model, splits=splits))
    recipes.train_vit(tmp_path / "run", images=mixed_photos, start_from=pretrained_folder, image_size=12)
    model, info = received["model"], received["splits"].info
    assert (model.config.image_size, model.config.num_labels, model.config.label_names) == (12, 2, ("apple", "pear"))
    assert not np.any(model.head.kernel[...]) and not np.any(model.head.bias[...])  # the new head starts at zero
    np.testing.assert_allclose(info["mean"], [0.4, 0.5, 0.6], rtol=1e-6)
    np.testing.assert_allclose(info["std"], [0.2, 0.25, 0.3], rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classifier head's weights are not a ViTModel's
        backbone = transformers.ViTModel.from_pretrained(pretrained_folder, add_pooling_layer=False).eval()
    inputs = image_inputs(12, 12)  # at the new size: positions resampled as transformers' interpolate_pos_encoding
    assert_parity(flaxen_outputs(model.vit, inputs), hf_outputs(backbone, inputs))
    recipes.train_vit(tmp_path / "own", images=mixed_photos, start_from=pretrained_folder)  # at the model's 8×8
    assert received["model"].config.image_size == 8
    inputs = image_inputs(8, 8)
    assert_parity(flaxen_outputs(received["model"].vit, inputs), hf_outputs(backbone, inputs))


def test_train_vit_from_a_pretrained_folder_from_the_shell(pretrained_folder, mixed_photos, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "vit", "--images", str(mixed_photos), "--from", str(pretrained_folder), "--out", str(run)]
    assert main([*argv, *SHORT]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["start_from"] == str(pretrained_folder) and info["image_shape"] == [8, 8, 3]  # the model's own size
    assert info["training"]["learning_rate"] == recipes.PRETRAINED_VIT_LEARNING_RATE
