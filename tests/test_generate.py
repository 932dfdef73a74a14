import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import GPTConfig, GPTForCausalLM
from flaxen.generate import generate, generate_ids, sample_next


@pytest.fixture(scope="module")
def model():
    m = GPTForCausalLM(GPTConfig.tiny(), rngs=nnx.Rngs(0))
    m.eval()
    return m


def uncached_greedy(model, prompt, steps):
    """Greedy decoding without a cache: re-run the whole (right-padded, fixed-shape) sequence every step.

    Causality makes the padding after position t irrelevant to the logits at t, so one compiled shape serves all steps.
    """
    length = len(prompt) + steps
    forward = nnx.jit(lambda m, ids: m(ids))
    sequence = np.zeros((1, length), np.int32)
    sequence[0, : len(prompt)] = prompt
    for position in range(len(prompt), length):
        logits = forward(model, jnp.asarray(sequence))
        sequence[0, position] = int(jnp.argmax(logits[0, position - 1]))
    return sequence[0, len(prompt) :]


def test_cached_greedy_decoding_equals_uncached_for_left_padded_prompts_of_different_lengths(model):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 512, 7), rng.integers(0, 512, 3)]
    prompt_ids = np.zeros((2, 7), np.int32)
    prompt_mask = np.zeros((2, 7), bool)
    for row, prompt in enumerate(prompts):
        prompt_ids[row, 7 - len(prompt) :] = prompt
        prompt_mask[row, 7 - len(prompt) :] = True
    cached = generate_ids(model, prompt_ids, prompt_mask, max_new_tokens=12, temperature=0)
    for row, prompt in enumerate(prompts):
        np.testing.assert_array_equal(cached[row], uncached_greedy(model, prompt, 12))


def test_sampling_is_seeded_and_top_k_one_is_greedy(model):
    prompt = np.arange(1, 5, dtype=np.int32)[None]
    a = generate_ids(model, prompt, max_new_tokens=10, temperature=1.5, seed=3)
    b = generate_ids(model, prompt, max_new_tokens=10, temperature=1.5, seed=3)
    c = generate_ids(model, prompt, max_new_tokens=10, temperature=1.5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = generate_ids(model, prompt, max_new_tokens=10, temperature=0)
    np.testing.assert_array_equal(generate_ids(model, prompt, max_new_tokens=10, temperature=1.0, top_k=1), greedy)
    np.testing.assert_array_equal(generate_ids(model, prompt, max_new_tokens=10, temperature=1.0, top_p=1e-6), greedy)


def test_top_k_and_top_p_only_sample_from_the_allowed_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.split(jax.random.key(0), 1)[0]
    top2 = np.asarray(sample_next(logits, keys, temperature=1.0, top_k=2, top_p=None))
    assert set(top2.tolist()) == {0, 1}
    nucleus = np.asarray(sample_next(logits, keys, temperature=1.0, top_k=None, top_p=0.85))
    assert set(nucleus.tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.85, so the third token is still needed
    assert abs((nucleus == 0).mean() - 0.5 / 0.95) < 0.04


def test_rows_stop_at_end_of_text_and_stay_stopped(model):
    prompt = np.arange(1, 5, dtype=np.int32)[None]
    greedy = generate_ids(model, prompt, max_new_tokens=10, temperature=0)
    eos = int(greedy[0, 3])  # pretend the 4th greedy token is end-of-text
    stopped = generate_ids(model, prompt, max_new_tokens=10, temperature=0, eos_token_id=eos)
    first = int(np.argmax(greedy[0] == eos))
    np.testing.assert_array_equal(stopped[0, : first + 1], greedy[0, : first + 1])
    assert (stopped[0, first:] == eos).all()


class CharTokenizer:
    """A stand-in for tokenizers.Tokenizer: one id per byte, 0 is end-of-text."""

    class Encoding:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text, add_special_tokens=False):
        return self.Encoding([b for b in text.encode()])

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i not in (0,) and i < 256).decode(errors="replace")

    def token_to_id(self, token):
        return 0 if token == "<|endoftext|>" else None


def test_generate_text_for_a_batch_of_prompts_keeps_each_prompt(model):
    out = generate(model, CharTokenizer(), ["ROMEO:", "A"], max_new_tokens=5, temperature=0)
    assert out[0].startswith("ROMEO:") and out[1].startswith("A")
    single = generate(model, CharTokenizer(), "A", max_new_tokens=5, temperature=0)
    assert single == out[1]
    new_ids = generate_ids(model, np.asarray([[ord("A")]], np.int32), max_new_tokens=5, temperature=0)[0]
    assert out[1] == "A" + CharTokenizer().decode(new_ids.tolist())  # the prompt, then the greedy new tokens


def test_bad_requests_are_refused(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        generate_ids(model, np.ones((1, 60), np.int32), max_new_tokens=10)
    with pytest.raises(ValueError, match="left-padded"):
        generate_ids(model, np.ones((1, 4), np.int32), np.array([[1, 1, 1, 0]], bool), max_new_tokens=2)


def test_decoding_asks_for_eval_mode():
    gpt = GPTForCausalLM(GPTConfig.tiny(), rngs=nnx.Rngs(0)).gpt  # a new model is in training mode
    with pytest.raises(ValueError, match="decoding runs in eval mode"):
        gpt.decode(jnp.ones((1, 2), jnp.int32), gpt.empty_cache(1, 4), positions=jnp.arange(2)[None])


@pytest.mark.parametrize("chunk", [1, 4])
def test_decoding_in_rounds_gives_the_tokens_of_one_step_at_a_time(model, chunk, monkeypatch):
    """The loop checks for the end of every row once a round; the steps it runs past the end are dropped, and a
    request that fills the whole context never reads a position past it."""
    generation = importlib.import_module("flaxen.generate")  # the module, not the function flaxen exports
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 512, (3, 5)).astype(np.int32)
    requests = [
        dict(max_new_tokens=11, temperature=0.0),
        dict(max_new_tokens=10, temperature=1.0, seed=4),
        dict(max_new_tokens=9, temperature=0.0, eos_token_id=int(uncached_greedy(model, prompt[0], 3)[2])),
        dict(max_new_tokens=64 - 5, temperature=0.0),  # prompt + new tokens = the whole context
    ]
    expected = [generate_ids(model, prompt, **request) for request in requests]  # the default rounds (16 steps)
    monkeypatch.setattr(generation, "DECODE_CHUNK", chunk)
    for request, tokens in zip(requests, expected):
        np.testing.assert_array_equal(generate_ids(model, prompt, **request), tokens)
    assert (expected[2][0, 2:] == requests[2]["eos_token_id"]).all()  # row 0 ended at its third token


def test_decoding_compiles_once_for_every_prompt_of_a_shape_into_one_loop_program(model):
    generate_module = importlib.import_module("flaxen.generate")

    rng = np.random.default_rng(3)
    generate_module._decode.clear_cache()
    for _ in range(3):  # other prompts, other seeds: the same program
        prompt = jnp.asarray(rng.integers(0, 512, (2, 5)), jnp.int32)
        generate_ids(model, prompt, max_new_tokens=20, temperature=0.8, top_k=5, seed=int(rng.integers(100)))
    assert generate_module._decode._cache_size() == 1
    graphdef, state = nnx.split(model)
    prompt = jnp.zeros((2, 5), jnp.int32)
    text = generate_module._decode.lower(
        graphdef,
        state,
        prompt,
        jnp.ones((2, 5), bool),
        jax.random.key(0),
        max_new_tokens=20,
        temperature=0.8,
        top_k=5,
        top_p=None,
        eos_token_id=None,
    ).as_text()
    assert "stablehlo.while" in text  # the token loop is inside the one program: no host round trip a token
