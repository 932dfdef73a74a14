"""Exported classifiers carry their labels: transformers' own pipelines on a folder flaxen wrote give the same labels
and scores as flaxen's pipeline, live (torch) and from golden fixtures (no torch)."""

import json

import numpy as np
import pytest
from hf_reference import (
    FIXTURES,
    PIPELINE_LABELS,
    PIPELINE_TEXTS,
    build_pipeline_folder,
    hf_pipeline_scores,
    pipeline_images,
)

import flaxen

TASKS = list(PIPELINE_LABELS)


def flaxen_scores(task: str, folder) -> list[dict[str, float]]:
    predictor = flaxen.pipeline(task, folder)
    records = predictor(PIPELINE_TEXTS if task == "text-classification" else pipeline_images())
    return [record["scores"] for record in records]


def assert_same_scores(ours: list[dict[str, float]], theirs: list[dict[str, float]], labels) -> None:
    assert [set(row) for row in ours] == [set(labels)] * len(theirs) == [set(row) for row in theirs]
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose([mine[name] for name in labels], [reference[name] for name in labels], atol=1e-5)
        assert max(mine, key=mine.get) == max(reference, key=reference.get)


@pytest.mark.parametrize("task", TASKS)
def test_golden_pipeline_fixture(task):
    folder = FIXTURES / f"pipeline-{task}"
    expected = json.loads((folder / "expected.json").read_text())
    assert_same_scores(flaxen_scores(task, folder), expected, PIPELINE_LABELS[task])


@pytest.mark.parametrize("task", TASKS)
def test_transformers_pipeline_on_an_exported_folder(task, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = build_pipeline_folder(task, tmp_path / task)
    config = json.loads((folder / "config.json").read_text())
    assert list(config["id2label"].values()) == list(PIPELINE_LABELS[task])
    assert_same_scores(flaxen_scores(task, folder), hf_pipeline_scores(task, folder), PIPELINE_LABELS[task])


def write_photos(root, *, grey: bool):
    """Two classes of 5 images each, of assorted sizes and aspect ratios, grey-scale or colour PNGs."""
    from PIL import Image

    rng = np.random.default_rng(1)
    files = []
    for name in ("left", "right"):
        (root / name).mkdir(parents=True)
        for index in range(5):
            height, width = rng.integers(8, 20, 2)
            pixels = rng.integers(0, 256, (height, width) if grey else (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
            files.append(str(root / name / f"{index}.png"))
    return files


@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_transformers_pipeline_on_what_flaxen_convert_writes_from_a_real_run(kind, tmp_path):
    """`flaxen train vit` on a folder, `flaxen convert RUN EXPORT`, then transformers' image pipeline on the same
    files gives flaxen predict's labels and scores (a grey run's export takes the RGB images transformers makes)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flaxen.cli import main

    files = write_photos(tmp_path / "photos", grey=kind == "grey")
    run, export = tmp_path / "run", tmp_path / "export"
    train = ["--preset", "tiny", "--image-size", "8", "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert main(["train", "vit", "--images", str(tmp_path / "photos"), "--out", str(run), *train]) == 0
    assert json.loads((run / "run.json").read_text())["image_shape"] == [8, 8, 1 if kind == "grey" else 3]
    assert main(["convert", str(run), str(export)]) == 0
    ours = [record["scores"] for record in flaxen.pipeline(model=run)(files)]
    predictor = transformers.pipeline("image-classification", model=str(export), device="cpu")
    theirs = [{entry["label"]: entry["score"] for entry in row} for row in predictor(files, top_k=2)]
    assert_same_scores(ours, theirs, ("left", "right"))
