"""The package's layering holds: the core knows no file format or model, `flaxen.hf` no model by name, and each
module imports cleanly on its own, whatever is imported first."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import flaxen
from flaxen.cli import build_parser
from flaxen.models import CONFIG_CLASSES, MODEL_CLASSES
from flaxen.recipes import RECIPES

PACKAGE = Path(flaxen.__file__).parent


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """For every .py file under `folder`: the top-level names of the modules it imports (flaxen.x.y kept whole)."""
    result = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        result[str(path.relative_to(PACKAGE))] = names
    return result


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("core", ("safetensors", "flaxen.hf", "flaxen.models", "flaxen.runs", "flaxen.text", "flaxen.data")),
        ("hf", ("flaxen.models", "flaxen.runs", "flaxen.train", "flaxen.recipes")),
        ("models", ("flaxen.runs", "flaxen.train", "flaxen.recipes", "flaxen.data", "safetensors")),
    ],
)
def test_lower_layers_do_not_import_higher_ones(folder, forbidden):
    offenders = {
        file: sorted(name for name in names if any(name == f or name.startswith(f + ".") for f in forbidden))
        for file, names in imported_modules(PACKAGE / folder).items()
    }
    assert {file: names for file, names in offenders.items() if names} == {}


@pytest.mark.parametrize(
    "module",
    [
        "flaxen.runs",
        "flaxen.train",
        "flaxen.recipes",
        "flaxen.convert",
        "flaxen.hf",
        "flaxen.predict",
        "flaxen.evaluation",
    ],
)
def test_every_module_imports_first(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True, timeout=120)


def test_one_registry_names_every_model_config_and_recipe():
    assert {recipe.model_class.__name__ for recipe in RECIPES.values()} <= set(MODEL_CLASSES)
    assert {recipe.config_class.__name__ for recipe in RECIPES.values()} <= set(CONFIG_CLASSES)
    commands = build_parser()._subparsers._group_actions[0].choices
    for recipe in RECIPES.values():
        command, family = recipe.command
        journey = commands[command]._subparsers._group_actions[0].choices[family]
        assert journey.get_default("recipe") == recipe.name
        help_text = journey.format_help()
        assert all(preset in help_text for preset in recipe.config_class.PRESETS)  # --help reads the table


@pytest.mark.parametrize("config_class", list(CONFIG_CLASSES.values()))
def test_presets_come_from_one_table(config_class):
    for name, (_, fields) in config_class.PRESETS.items():
        config = config_class.from_preset(name)
        assert all(getattr(config, field) == (tuple(v) if isinstance(v, list) else v) for field, v in fields.items())
        assert getattr(config_class, name)() == config  # the classmethod sugar is the same preset
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of"):
        config_class.from_preset("huge")


def test_the_published_sizes_are_the_published_models():
    """Stated here independently of the preset tables: GPT-2 small, BERT-base, ViT-B/16, and the CLI's defaults."""
    from flaxen import BertConfig, GPTConfig, ViTConfig

    def size(config):
        return config.hidden_size, config.num_layers, config.num_heads, config.mlp_dim

    gpt2 = GPTConfig.from_preset("gpt2")
    assert size(gpt2) + (gpt2.vocab_size, gpt2.context_length) == (768, 12, 12, 3072, 50257, 1024)
    bert = BertConfig.from_preset("bert_base")
    assert size(bert) + (bert.vocab_size, bert.max_positions) == (768, 12, 12, 3072, 30522, 512)
    vit = ViTConfig.from_variant("B/16", image_size=224)
    assert size(vit) + (vit.patch_size,) == (768, 12, 12, 3072, 16)
    assert size(GPTConfig.from_preset("mini")) == (128, 4, 4, 512)  # `flaxen pretrain gpt`'s default
    assert BertConfig.from_preset("small").hidden_size == 256  # `flaxen pretrain bert`'s default


def test_import_flaxen_leaves_the_data_and_training_stacks_for_first_use():
    """`import flaxen` (and so `flaxen --help` and the command's relaunch) loads models, not the heavy stacks."""
    heavy = ["datasets", "grain", "orbax", "matplotlib", "tensorboardX", "torch", "transformers", "flaxen.train"]
    probe = f"import sys, flaxen; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    probe = "import sys, flaxen; flaxen.Trainer; print('flaxen.train' in sys.modules)"  # and on first use, there
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "True\n"
