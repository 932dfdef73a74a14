import json

import numpy as np
import pandas as pd
import pytest

from flaxen.data import check_num_labels, text_classification
from flaxen.text import encode_batch

ROWS = [
    ("the movie was great, I loved it", "positive"),
    ("the movie was awful, I hated it", "negative"),
    ("it was fine, nothing special", "neutral"),
    ("great great great", "positive"),
    ("awful awful", "negative"),
    ("fine", "neutral"),
    ("I loved it", "positive"),
    ("I hated it", "negative"),
    ("nothing special", "neutral"),
    ("loved", "positive"),
]


def write_csv(path, rows=ROWS, columns=("text", "label"), encoding="utf-8"):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False, encoding=encoding)
    return path


def all_rows(splits):
    """Every (decoded text, label name) pair across both splits."""
    names = splits.info["label_names"]
    pairs = []
    for split in (splits.train, splits.validation):
        if split is None:
            continue
        for ids, mask, label in zip(split["token_ids"], split["padding_mask"], split["labels"]):
            pairs.append((ids[mask].tolist(), names[label]))
    return pairs


def test_string_labels_map_to_sorted_ids_and_rows_keep_their_texts(bpe, tmp_path):
    splits = text_classification(write_csv(tmp_path / "reviews.csv"), bpe, max_length=12, validation_fraction=0.2)
    assert splits.info["label_names"] == ["negative", "neutral", "positive"]
    assert len(splits.train) == 8 and len(splits.validation) == 2
    expected = sorted((bpe.encode(text).ids[:12], label) for text, label in ROWS)
    assert sorted(all_rows(splits)) == expected
    assert splits.train["token_ids"].dtype == np.int32 and splits.train["labels"].dtype == np.int32
    assert splits.train["padding_mask"].dtype == bool and splits.train["token_ids"].shape[1] == 12


def test_token_arrays_equal_encode_batch(wordpiece, tmp_path):
    splits = text_classification(write_csv(tmp_path / "r.csv"), wordpiece, max_length=6, validation_fraction=0.0)
    expected = encode_batch(wordpiece, [text for text, _ in ROWS], max_length=6)
    np.testing.assert_array_equal(splits.train["token_ids"], expected["token_ids"])
    np.testing.assert_array_equal(splits.train["padding_mask"], expected["padding_mask"])
    names = ["negative", "neutral", "positive"]
    assert splits.train["labels"].tolist() == [names.index(label) for _, label in ROWS]


def test_labels_argument_keeps_and_orders_a_subset(bpe, tmp_path):
    splits = text_classification(
        write_csv(tmp_path / "r.csv"), bpe, labels=["positive", "negative"], validation_fraction=0.0
    )
    assert splits.info["label_names"] == ["positive", "negative"]
    assert splits.info["dropped_rows"] == 3
    kept = [(text, label) for text, label in ROWS if label != "neutral"]
    assert splits.train["labels"].tolist() == [0 if label == "positive" else 1 for _, label in kept]


def test_label_filter_drops_rows_by_raw_label(bpe, tmp_path):
    splits = text_classification(
        write_csv(tmp_path / "r.csv"), bpe, label_filter=lambda label: label != "neutral", validation_fraction=0.0
    )
    assert splits.info["label_names"] == ["negative", "positive"]
    assert len(splits.train) == 7


def test_integer_labels_are_kept_as_they_are_from_jsonl(bpe, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"sentence": t, "stars": i % 3 + 2}) + "\n" for i, (t, _) in enumerate(ROWS)))
    splits = text_classification(path, bpe, text_column="sentence", label_column="stars", validation_fraction=0.0)
    assert splits.train["labels"].tolist() == [i % 3 + 2 for i in range(len(ROWS))]
    assert splits.info["label_names"] == ["0", "1", "2", "3", "4"] and splits.info["num_labels"] == 5


def test_parquet_with_a_separate_validation_file(bpe, tmp_path):
    pd.DataFrame(ROWS[:7], columns=["text", "label"]).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(ROWS[7:], columns=["text", "label"]).to_parquet(tmp_path / "valid.parquet")
    splits = text_classification(tmp_path / "train.parquet", bpe, validation=tmp_path / "valid.parquet")
    assert len(splits.train) == 7 and len(splits.validation) == 3
    names = splits.info["label_names"]
    assert [names[i] for i in splits.validation["labels"]] == [label for _, label in ROWS[7:]]


def test_missing_column_lists_the_columns_there_are(bpe, tmp_path):
    path = write_csv(tmp_path / "r.csv", columns=("review", "sentiment"))
    with pytest.raises(ValueError, match="has no column 'text', 'label'; its columns are: review, sentiment"):
        text_classification(path, bpe)


def test_empty_texts_are_rejected(bpe, tmp_path):
    path = write_csv(tmp_path / "r.csv", rows=ROWS + [("   ", "positive")])
    with pytest.raises(ValueError, match=r"1 row\(s\) with an empty .text. \(the first is data row 10,"):
        text_classification(path, bpe)


def test_latin1_file_suggests_the_encoding_and_then_decodes_right(bpe, tmp_path):
    path = write_csv(
        tmp_path / "r.csv", rows=[("caf\xe9 cr\xe8me", "positive"), ("na\xefve", "negative")] * 3, encoding="latin-1"
    )
    with pytest.raises(ValueError, match=r"r\.csv is not valid utf-8 text.*encoding='latin-1'"):
        text_classification(path, bpe)
    splits = text_classification(path, bpe, encoding="latin-1", validation_fraction=0.0)
    first = splits.train["token_ids"][0][splits.train["padding_mask"][0]]
    assert bpe.decode(first.tolist()) == "café crème"


def test_files_without_rows_are_rejected(bpe, tmp_path):
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match="has no rows"):
        text_classification(tmp_path / "header.csv", bpe)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        text_classification(tmp_path / "empty.csv", bpe)
    with pytest.raises(ValueError, match="has no labels; a classifier needs examples of at least two labels"):
        text_classification(write_csv(tmp_path / "r.csv"), bpe, label_filter=lambda label: False)


def test_unknown_labels_and_formats_are_rejected(bpe, tmp_path):
    path = write_csv(tmp_path / "r.csv")
    with pytest.raises(ValueError, match=r"label\(s\) \['postive'\] do not occur"):
        text_classification(path, bpe, labels=["postive", "negative"])
    with pytest.raises(ValueError, match="expected a file ending in .csv"):
        text_classification(tmp_path / "r.xlsx", bpe)
    with pytest.raises(ValueError, match="no such file"):
        text_classification(tmp_path / "absent.csv", bpe)


def test_missing_labels_name_the_row(bpe, tmp_path):
    path = write_csv(tmp_path / "r.csv", rows=ROWS[:3] + [("no label here", None)])
    with pytest.raises(ValueError, match="row 3 has no label"):
        text_classification(path, bpe)


def test_check_num_labels_explains_a_mismatch(bpe, tmp_path):
    splits = text_classification(write_csv(tmp_path / "r.csv"), bpe)
    check_num_labels(splits, 3)
    with pytest.raises(
        ValueError,
        match=r"the data has 3 labels \(negative, neutral, positive\) but the model "
        r"has num_labels=2",
    ):
        check_num_labels(splits, 2)


def test_tsv_json_and_parquet_tables_give_the_csv_s_rows(bpe, tmp_path):
    frame = pd.DataFrame(ROWS, columns=["text", "label"])
    expected = all_rows(text_classification(write_csv(tmp_path / "r.csv"), bpe, max_length=16, seed=0))
    frame.to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    (tmp_path / "r.json").write_text(json.dumps(frame.to_dict(orient="records")))
    frame.to_parquet(tmp_path / "r.parquet")
    for name in ("r.tsv", "r.json", "r.parquet"):
        assert all_rows(text_classification(tmp_path / name, bpe, max_length=16, seed=0)) == expected, name
