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
