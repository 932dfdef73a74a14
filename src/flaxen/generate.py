"""Text generation: prefill a KV cache with the prompt, then decode in one compiled `lax.while_loop`."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxen.models.gpt import GPTForCausalLM

DECODE_CHUNK = 16  # decoding steps between two checks of whether every row has ended


def sample_next(
    logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int | None, top_p: float | None
) -> jax.Array:
    """(B, V) logits -> (B,) token ids: greedy when temperature is 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # the most likely token is always kept
        cutoff = jnp.take_along_axis(sorted_logits, kept - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_token_id")
)
def _decode(graphdef, state, prompt_ids, prompt_mask, key, *, max_new_tokens, temperature, top_k, top_p, eos_token_id):
    model = nnx.merge(graphdef, state)
    model.eval()
    gpt = model.gpt
    batch, prompt_length = prompt_ids.shape
    sample = functools.partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p)

    # After the first token the loop runs in rounds of `chunk` steps of known count: the compiled program checks
    # "has every row ended?" once a round (on a GPU each check waits for the device), not once a token.
    chunk = max(1, min(DECODE_CHUNK, max_new_tokens - 1))
    rounds = -(-(max_new_tokens - 1) // chunk)
    length = 1 + rounds * chunk  # the steps past max_new_tokens in the last round are computed and dropped
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    cache = gpt.empty_cache(batch, prompt_length + length)
    hidden, cache = gpt.decode(prompt_ids, cache, positions=positions, padding_mask=prompt_mask)
    key, step_key = jax.random.split(key)
    first = sample(gpt.token_embedding.attend(hidden[:, -1]), step_key)  # LM head only where it is needed
    next_position = positions[:, -1] + 1
    tokens = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(first)
    done = first == eos_token_id if eos_token_id is not None else jnp.zeros((batch,), bool)
    last_position = gpt.config.context_length - 1  # dropped steps may run past the context

    def keep_going(carry):
        step, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_one(_, carry):
        step, tokens, cache, position, done, key = carry
        previous = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1, keepdims=True)  # (B, 1)
        hidden, cache = gpt.decode(previous, cache, positions=jnp.minimum(position, last_position)[:, None])
        key, step_key = jax.random.split(key)
        token = sample(gpt.token_embedding.attend(hidden[:, 0]), step_key)
        if eos_token_id is not None:
            token = jnp.where(done, eos_token_id, token)
            done = done | (token == eos_token_id)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
        return step + 1, tokens, cache, position + 1, done, key

    def decode_round(carry):
        return jax.lax.fori_loop(0, chunk, decode_one, carry)

    step, tokens, *_ = jax.lax.while_loop(
        keep_going, decode_round, (jnp.int32(1), tokens, cache, next_position, done, key)
    )
    tokens = tokens[:, :max_new_tokens]
    if eos_token_id is not None:  # positions never reached after every row stopped
        tokens = jnp.where(jnp.arange(max_new_tokens)[None, :] < step, tokens, eos_token_id)
    return tokens


def generate_ids(
    model: GPTForCausalLM,
    prompt_ids: np.ndarray | jax.Array,
    prompt_mask: np.ndarray | jax.Array | None = None,
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(B, T) left-padded prompt ids -> (B, max_new_tokens) new ids; after a row's end-of-text, only end-of-text."""
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (batch, length) with length >= 1, got shape {tuple(prompt_ids.shape)}")
    prompt_mask = jnp.ones(prompt_ids.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if not bool(prompt_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: the last position of every row must be a real token")
    context = model.config.context_length
    if prompt_ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"prompt ({prompt_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of "
            f"{context}; shorten the prompt or ask for fewer tokens"
        )
    if (
        max_new_tokens < 1
        or temperature < 0
        or (top_k is not None and top_k < 1)
        or (top_p is not None and not 0 < top_p <= 1)
    ):
        raise ValueError("need max_new_tokens >= 1, temperature >= 0, top_k >= 1 and 0 < top_p <= 1")
    graphdef, state = nnx.split(model)
    tokens = _decode(
        graphdef,
        state,
        prompt_ids,
        prompt_mask,
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
    )
    return np.asarray(tokens)


def generate(
    model: GPTForCausalLM,
    tokenizer,
    prompt: str | Sequence[str],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    end_of_text: str = "<|endoftext|>",
) -> str | list[str]:
    """Prompt(s) -> prompt plus generated text, stopping at `end_of_text` or after `max_new_tokens`."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    eos_token_id = tokenizer.token_to_id(end_of_text)
    if any(len(ids) == 0 for ids in encoded):
        if eos_token_id is None:
            raise ValueError(f"an empty prompt needs a start token, but the tokenizer has no {end_of_text!r}")
        encoded = [ids or [eos_token_id] for ids in encoded]
    width = max(len(ids) for ids in encoded)
    prompt_ids = np.zeros((len(encoded), width), np.int32)
    prompt_mask = np.zeros((len(encoded), width), bool)
    for row, ids in enumerate(encoded):
        prompt_ids[row, width - len(ids) :] = ids
        prompt_mask[row, width - len(ids) :] = True
    new_ids = generate_ids(
        model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        seed=seed,
    )
    texts = []
    for p, row in zip(prompts, new_ids):
        row = row.tolist()
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        texts.append(p + tokenizer.decode(row, skip_special_tokens=True))
    return texts[0] if isinstance(prompt, str) else texts
