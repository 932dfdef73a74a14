"""`flaxen train vit` on photos as they come: any size, format and mode (from a pretrained ViT: tests/interop)."""

import json

from flaxen.cli import main

SHORT = ["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--no-progress"]


def test_a_folder_of_mixed_photos_trains_and_its_run_labels_them(mixed_photos, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "vit", "--images", str(mixed_photos), "--image-size", "12", "--preset", "tiny", "--out", str(run)]
    assert main([*argv, *SHORT]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["image_shape"] == [12, 12, 3] and info["label_names"] == ["apple", "pear"]
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--images", str(mixed_photos / "pear" / "rotated.jpg")]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("apple", "pear")
    assert main(["eval", "--run", str(run)]) == 0  # the validation split rebuilt at the recorded size


def test_a_truncated_photo_stops_the_run_in_one_line_or_is_skipped(mixed_photos, tmp_path, capsys):
    bad = mixed_photos / "apple" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    run = tmp_path / "run"
    argv = ["train", "vit", "--images", str(mixed_photos), "--image-size", "12", "--preset", "tiny", "--out", str(run)]
    assert main([*argv, *SHORT]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flaxen: error: cannot read image {bad}") and len(err.strip().splitlines()) == 1
    assert not run.exists()
    assert main([*argv, *SHORT, "--skip-bad-images"]) == 0
    assert f"skipped 1 unreadable images, the first {bad}" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["skipped_images"] == [str(bad)]
