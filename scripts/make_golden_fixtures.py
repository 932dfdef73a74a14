"""Write tests/fixtures/<case>/: a tiny Hugging Face folder (config.json + model.safetensors) and expected.safetensors.

expected.safetensors holds the case's inputs ("input.*") and transformers' outputs ("output.*": logits or the pooled
output, and the hidden states of every layer), so the parity tests also run where torch is absent. The
pipeline-<task> folders are flaxen exports with expected.json: transformers' pipeline scores on them.
Run from the repository root with torch and transformers installed:  python scripts/make_golden_fixtures.py [NAME...]
(names: only those fixtures; default: all).
"""

import json
import shutil
import sys
from pathlib import Path

from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "interop"))
from hf_reference import (  # noqa: E402
    CASES,
    FIXTURES,
    PIPELINE_LABELS,
    build_hf_model,
    build_pipeline_folder,
    hf_outputs,
    hf_pipeline_scores,
)

SIZE_LIMIT = 200_000  # bytes per file: fixtures live in git


def main(only: list[str]) -> None:
    for name, case in CASES.items():
        if only and name not in only:
            continue
        folder = FIXTURES / name
        shutil.rmtree(folder, ignore_errors=True)
        model = build_hf_model(case)
        model.save_pretrained(folder)
        expected = {f"input.{k}": v for k, v in case.inputs.items()} | {
            f"output.{k}": v for k, v in hf_outputs(model, case.inputs).items()
        }
        save_file(expected, folder / "expected.safetensors")
        report(folder)
    for task in PIPELINE_LABELS:  # a flaxen export, and what transformers' pipeline makes of it
        if only and f"pipeline-{task}" not in only:
            continue
        folder = FIXTURES / f"pipeline-{task}"
        shutil.rmtree(folder, ignore_errors=True)
        build_pipeline_folder(task, folder)
        (folder / "expected.json").write_text(json.dumps(hf_pipeline_scores(task, folder), indent=1) + "\n")
        report(folder)


def report(folder: Path) -> None:
    for file in sorted(folder.iterdir()):
        size = file.stat().st_size
        assert size < SIZE_LIMIT, f"{file} is {size} bytes; shrink the case"
        print(f"{file.relative_to(FIXTURES.parent)}: {size / 1000:.1f} kB")


if __name__ == "__main__":
    main(sys.argv[1:])
