"""Pipelines on new data: the same numbers as a direct forward pass over training's preprocessing, bounded
compilations, images of any size and channels, language-model scores, and label names carried through folders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import flaxen
from flaxen import (
    BertConfig,
    BertForSequenceClassification,
    GPTConfig,
    GPTForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)
from flaxen.data import normalize_images
from flaxen.evaluation import classification_report
from flaxen.hf.load import _with_overrides
from flaxen.predict import (
    ImageClassificationPipeline,
    LanguageModelPipeline,
    TextClassificationPipeline,
    length_buckets,
    row_buckets,
)
from flaxen.text import encode_batch, train_bpe, train_wordpiece

WORDS = "the king queen love night day sword crown blood heart fair foul sweet death life honour".split()
LABELS = ("negative", "neutral", "positive")


def sentences(count: int, seed: int, longest: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, longest))) for _ in range(count)]


@pytest.fixture(scope="module")
def text_classifier():
    tokenizer = train_wordpiece(iter(sentences(200, 0) * 3), vocab_size=60)
    config = BertConfig.tiny(vocab_size=60, num_labels=3, label_names=LABELS, dropout=0.0)
    return BertForSequenceClassification(config, rngs=nnx.Rngs(0)), tokenizer


def test_text_predictions_equal_the_forward_pass_at_the_training_length(text_classifier):
    model, tokenizer = text_classifier
    texts = sentences(23, 1)  # lengths 3 to 42 tokens: some are cut at max_length
    classify = TextClassificationPipeline(model, tokenizer, max_length=24, batch_size=8)
    encoded = encode_batch(tokenizer, texts, 24)
    expected = jax.nn.softmax(model(encoded["token_ids"], encoded["padding_mask"]), axis=-1)
    np.testing.assert_allclose(classify.probabilities(texts), expected, atol=1e-5)
    records = classify(texts)
    assert [r["label"] for r in records] == [LABELS[i] for i in np.argmax(expected, axis=-1)]
    assert set(records[0]["scores"]) == set(LABELS) and records[0]["score"] == max(records[0]["scores"].values())
    single = classify(texts[3])  # one text in, one record out (a 1-row batch: equal within float rounding)
    assert single["label"] == records[3]["label"] and single["score"] == pytest.approx(records[3]["score"], abs=1e-6)


def test_text_shapes_compiled_stay_within_the_buckets(text_classifier):
    model, tokenizer = text_classifier
    classify = TextClassificationPipeline(model, tokenizer, max_length=64, batch_size=4)
    bound = len(row_buckets(4)) * len(length_buckets(64))
    assert (row_buckets(4), length_buckets(64)) == ([1, 2, 4], [16, 24, 32, 48, 64])
    assert length_buckets(128)[-3:] == [64, 96, 128] and length_buckets(10) == [10]
    for seed in range(3):
        classify(sentences(37, seed, longest=70))
    after_many = classify.compilations
    assert 1 < after_many <= bound
    classify(sentences(37, 0, longest=70))  # shapes seen before compile nothing new
    assert classify.compilations == after_many


def test_text_bad_inputs_are_refused(text_classifier):
    model, tokenizer = text_classifier
    classify = TextClassificationPipeline(model, tokenizer, max_length=16)
    with pytest.raises(ValueError, match="input 1 is an empty text"):
        classify(["fair day", "  "])
    with pytest.raises(ValueError, match="label names for a model with 3 classes"):
        TextClassificationPipeline(model, tokenizer, max_length=16, label_names=["a", "b"])


@pytest.fixture(scope="module")
def image_classifier():
    config = ViTConfig.tiny(image_size=8, channels=1, num_labels=2, label_names=("cat", "dog"))
    return ViTForImageClassification(config, rngs=nnx.Rngs(0))


def test_image_files_are_normalised_as_training_did(image_classifier, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    for i, image in enumerate(pixels):
        folder = tmp_path / ("a" if i < 3 else "b/deeper")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    classify = ImageClassificationPipeline(image_classifier, mean=[0.4], std=[0.3], batch_size=2)
    expected = jax.nn.softmax(image_classifier(normalize_images(pixels, mean=[0.4], std=[0.3], scale=1 / 255)), -1)
    np.testing.assert_allclose(classify.probabilities(tmp_path), expected, atol=1e-5)  # the folder, recursively
    np.testing.assert_allclose(classify.probabilities(pixels), expected, atol=1e-5)  # a stack of arrays
    single = classify(Image.fromarray(pixels[4]))
    assert single["label"] == ("cat", "dog")[int(np.argmax(expected[4]))]
    assert classify.compilations <= len(row_buckets(2))


def test_images_of_another_size_and_colour_are_converted_resized_and_centre_cropped(image_classifier):
    classify = ImageClassificationPipeline(image_classifier, mean=[0.0], std=[1.0], scale=1.0)
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:, :, 0] = 200  # pure red: luma 0.299 · 200
    prepared = classify.preprocess(rgb)
    assert prepared.shape == (8, 8, 1)
    np.testing.assert_allclose(prepared, np.round(0.299 * 200), atol=0.5)
    stripes = np.zeros((8, 24), np.uint8)  # a wide image: black | white | black thirds; the crop keeps the middle
    stripes[:, 8:16] = 255
    np.testing.assert_allclose(classify.preprocess(stripes)[..., 0], 255.0)


def test_language_model_scores_equal_its_own_loss_and_cover_every_token():
    tokenizer = train_bpe(iter(sentences(200, 0)), vocab_size=300)
    model = GPTForCausalLM(GPTConfig.tiny(vocab_size=300, context_length=16, dropout=0.0), rngs=nnx.Rngs(0))
    scorer = LanguageModelPipeline(model, tokenizer, batch_size=4)
    short = "the king loves the night"
    ids = np.asarray([tokenizer.encode(short, add_special_tokens=False).ids], np.int32)
    loss, _ = model.loss({"token_ids": ids})
    score = scorer.score(short)
    np.testing.assert_allclose(score["loss"], float(loss), rtol=1e-5)
    assert score["tokens"] == ids.shape[1] - 1 and score["characters"] == len(short)
    # Bits per character from the model's next-token probabilities, in float64: -Σ log2 p(next token) / characters.
    logits = np.asarray(model(jnp.asarray(ids)), np.float64)[0, :-1]
    log_probabilities = logits - logits.max(-1, keepdims=True)
    log_probabilities -= np.log(np.exp(log_probabilities).sum(-1, keepdims=True))
    bits = -log_probabilities[np.arange(len(logits)), ids[0, 1:]].sum() / np.log(2)
    np.testing.assert_allclose(score["bits_per_character"], bits / len(short), rtol=1e-5)

    long = " ".join(sentences(3, 2))  # several windows of 16: each token after the first predicted once
    ids = tokenizer.encode(long, add_special_tokens=False).ids
    assert len(ids) > 40
    loss_of = nnx.jit(lambda model, window: model.loss({"token_ids": window})[0])
    nats = 0.0
    for start in range(0, len(ids) - 1, 16):
        window = np.asarray([ids[start : start + 17]], np.int32)
        nats += float(loss_of(model, window)) * (window.shape[1] - 1)
    score = scorer.score(long)
    assert score["tokens"] == len(ids) - 1
    each = scorer.score_each([short, long])  # one batched pass, split by text
    assert each[1]["tokens"] == score["tokens"] and each[1]["loss"] == pytest.approx(score["loss"], rel=1e-6)
    assert each[0]["loss"] == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(score["loss"], nats / (len(ids) - 1), rtol=1e-5)


def test_label_names_travel_through_hugging_face_folders(text_classifier, tmp_path):
    import json

    model, tokenizer = text_classifier
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"]["positive"] == 2
    assert BertForSequenceClassification.from_pretrained(tmp_path / "hf").config.label_names == LABELS
    renamed = BertForSequenceClassification.from_pretrained(tmp_path / "hf", label_names=("bad", "so-so", "good"))
    assert renamed.config.label_names == ("bad", "so-so", "good")
    assert _with_overrides({"num_labels": 3, "label_names": LABELS}, {"num_labels": 2}) == {"num_labels": 2}
    tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
    classify = flaxen.pipeline("text-classification", tmp_path / "hf")
    assert classify.label_names == list(LABELS) and classify.max_length == 64  # the tiny preset's positions
    with pytest.raises(ValueError, match="a pipeline needs a image-classification model"):
        flaxen.pipeline("image-classification", tmp_path / "hf")
    with pytest.raises(ValueError, match="label_names for num_labels"):
        BertConfig.tiny(num_labels=3, label_names=("a", "b"))


def test_classification_report_equals_scikit_learn():
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    predicted[truth == 3] = 3  # class 3 always right; class 2 never predicted below
    predicted[predicted == 2] = 1
    report = classification_report(truth, predicted, ["a", "b", "c", "d"])
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    assert report["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()
    np.testing.assert_allclose(report["macro_f1"], f1_score(truth, predicted, average="macro"))
    np.testing.assert_allclose([report["per_class"][n]["precision"] for n in "abcd"], precision)
    np.testing.assert_allclose([report["per_class"][n]["recall"] for n in "abcd"], recall)
    assert [report["per_class"][n]["support"] for n in "abcd"] == support.tolist()
    np.testing.assert_allclose(report["accuracy"], np.mean(truth == predicted))


def test_one_call_takes_files_folders_arrays_and_pil_images_in_their_order(image_classifier, tmp_path):
    """The README's `classify(["a.png", "photos/", numpy_image, pil_image])`: every image, in the order given."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    Image.fromarray(pixels[0]).save(tmp_path / "a.png")
    (tmp_path / "photos").mkdir()
    Image.fromarray(pixels[1]).save(tmp_path / "photos" / "b.png")
    classify = ImageClassificationPipeline(image_classifier, mean=[0.4], std=[0.3])
    records = classify([str(tmp_path / "a.png"), tmp_path / "photos", pixels[2], Image.fromarray(pixels[3])])
    expected = jax.nn.softmax(image_classifier(normalize_images(pixels, mean=[0.4], std=[0.3], scale=1 / 255)), -1)
    assert len(records) == 4
    for record, probabilities in zip(records, np.asarray(expected)):
        np.testing.assert_allclose([record["scores"][name] for name in ("cat", "dog")], probabilities, atol=1e-5)


def test_a_table_is_labelled_row_by_row_as_its_texts(text_classifier, tmp_path):
    model, tokenizer = text_classifier
    texts = sentences(9, 4)
    table = tmp_path / "new.csv"
    table.write_text("id,review\n" + "".join(f"{i},{text}\n" for i, text in enumerate(texts)))
    classify = TextClassificationPipeline(model, tokenizer, max_length=24)
    assert classify.predict_table(table, text_column="review") == classify(texts)
    with pytest.raises(ValueError, match="text"):
        classify.predict_table(table)  # no "text" column


def test_a_gpt_classifier_folder_gets_a_text_classification_pipeline(tmp_path):
    from flaxen import GPTConfig, GPTForSequenceClassification
    from flaxen.predict import pipeline

    tokenizer = train_bpe(iter(sentences(100, 0)), vocab_size=300)
    config = GPTConfig.tiny(vocab_size=300, num_labels=2, label_names=("no", "yes"), dropout=0.0)
    model = GPTForSequenceClassification(config, rngs=nnx.Rngs(0))
    model.save_pretrained(tmp_path / "model")
    flaxen.text.save_tokenizer(tokenizer, tmp_path / "model")
    classify = pipeline("text-classification", tmp_path / "model")
    texts = sentences(3, 6, longest=12)
    expected = []
    for text in texts:  # one at a time, unpadded: the last real token's logits
        ids = jnp.asarray([tokenizer.encode(text, add_special_tokens=False).ids])
        expected.append(np.asarray(jax.nn.softmax(model(ids), -1))[0])
    np.testing.assert_allclose(classify.probabilities(texts), np.stack(expected), atol=1e-5)
