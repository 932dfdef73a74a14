"""How attention runs: the kernel choice as a pure function of device, dtype, shape and mask, and the fused path's
padding (as key lengths, sequences padded to a multiple) equal to the boolean-mask path in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import BertConfig, BertForMaskedLM, GPTConfig, GPTForCausalLM, ViTConfig, ViTForImageClassification
from flaxen.core import attention, masks
from flaxen.core.attention import Device, attention_by_lengths, choose_implementation, explain

H200 = Device("cuda", (9, 0))
A100 = Device("cuda", (8, 0))
T4 = Device("cuda", (7, 5))


def choose(requested=None, *, device=H200, dtype="bfloat16", head_dim=64, length=1024, keys=None, causal=False,
           mask="none"):  # fmt: skip
    return choose_implementation(
        requested,
        device=device,
        dtype=jnp.dtype(dtype),
        head_dim=head_dim,
        query_length=length,
        key_length=length if keys is None else keys,
        is_causal=causal,
        mask=mask,
    )


@pytest.mark.parametrize(
    ("case", "expected", "why"),
    [
        (dict(causal=True), "cudnn", "fused"),  # GPT-2 training
        (dict(length=197), "cudnn", "fused"),  # ViT-B/16 at 224: odd, padded to 198 (below)
        (dict(length=128, mask="padding"), "cudnn", "key lengths"),  # BERT's padded batches
        (dict(length=128, mask="padding", causal=True), "cudnn", "key lengths"),
        (dict(dtype="float16"), "cudnn", "fused"),
        (dict(dtype="float32"), "xla", "float32"),
        (dict(device=T4), "xla", "compute capability"),
        (dict(device=A100, head_dim=160), "xla", "head dim 160"),
        (dict(head_dim=160), "cudnn", "fused"),  # Hopper takes head dims up to 256
        (dict(head_dim=260), "xla", "head dim"),
        (dict(head_dim=60), "xla", "head dim"),
        (dict(mask="general"), "xla", "DropKey"),
        (dict(length=20, keys=128, mask="padding"), "xla", "20 queries over 128 keys"),  # MLM's last layer
        (dict(length=1, keys=197), "xla", "1 queries"),  # ViT's [CLS]-only last layer
        (dict(device=Device("cpu"), causal=True), "blockwise", "1024 >= 256"),
        (dict(device=Device("cpu"), causal=True, length=128), "xla", "cpu"),
        (dict(device=Device("cpu"), causal=True, mask="general"), "xla", "cpu"),
        (dict(device=Device("cpu")), "xla", "cpu"),
        (dict(device=Device("tpu"), causal=True), "blockwise", "1024 >= 256"),
        (dict(device=Device("rocm"), causal=True), "xla", "rocm"),  # never the CPU's blockwise path on a GPU
        (dict(requested="xla"), "xla", "asked for"),
        (dict(requested="blockwise", causal=True, device=H200), "blockwise", "asked for"),
        (dict(requested="blockwise", causal=True, mask="general"), "xla", "blockwise takes"),
    ],
)
def test_the_automatic_choice_for_each_device_dtype_shape_and_mask(case, expected, why):
    choice = choose(**case)
    assert choice.implementation == expected
    assert why in choice.reason
    length = case.get("length", 1024)
    assert choice.padded_length == (length + length % 2 if expected == "cudnn" and "keys" not in case else length)


def test_cudnn_trains_on_even_lengths_so_odd_ones_are_padded(monkeypatch):
    assert choose(length=197).padded_length == 198  # ViT-B/16: 196 patches + [CLS]
    assert choose(length=1023, causal=True).padded_length == 1024  # GPT on 1024-token blocks sees 1023 inputs
    assert choose(length=128, mask="padding").padded_length == 128
    assert choose("cudnn", length=197, mask="general").padded_length == 198
    monkeypatch.setattr(attention, "CUDNN_LENGTH_MULTIPLE", 64)
    assert choose(length=197).padded_length == 256
    assert choose(length=20, keys=128).padded_length == 20  # only self-attention is padded


def test_an_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        choose("flash")


def test_explain_names_the_choice_for_a_model_config():
    gpt2 = GPTConfig.gpt2(dtype="bfloat16")
    assert explain(gpt2, 1024, is_causal=True, device=H200).startswith("cudnn: fused flash attention")
    assert explain(gpt2.replace(dtype="float32"), 1024, device=H200).startswith("xla: not cuDNN: float32")
    assert explain(gpt2, 1024, is_causal=True, device=Device("cpu")).startswith("blockwise")
    vit = ViTConfig.from_variant("B/16", dtype="bfloat16")
    assert explain(vit, 197, device=H200) == "cudnn, padded to 198: fused flash attention"
    bert = BertConfig.bert_base(dtype="bfloat16")
    assert explain(bert, 128, mask="padding", device=H200) == "cudnn: fused flash attention, padding as key lengths"
    assert explain(bert, 20, key_length=128, mask="padding", device=H200).startswith("xla")


def right_padding(lengths, length):
    return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


@pytest.mark.parametrize(
    ("length", "padded_length", "causal", "mask_of"),
    [
        (13, 16, False, "padding"),  # BERT-like, padded to a multiple
        (13, 13, True, "padding"),  # GPT-like with padding
        (9, 10, True, "padding"),
        (9, 10, False, "none"),  # ViT-like odd length made even
        (9, 10, False, "general"),  # DropKey-like random mask, padded with excluded keys
    ],
)
def test_padding_as_key_lengths_and_padded_lengths_equal_the_boolean_mask_path(length, padded_length, causal, mask_of):
    rng = np.random.default_rng(length)
    query, key, value = (jnp.asarray(rng.normal(size=(3, length, 2, 8)), jnp.float32) for _ in range(3))
    lengths = [length, length - 4, 1]
    if mask_of == "padding":
        mask = masks.padding(right_padding(lengths, length))
        real = np.asarray(right_padding(lengths, length))[:, :, None, None]
    elif mask_of == "general":
        mask = masks.random(jax.random.key(0), (3, 2, length, length), 0.3)
        real = np.ones((3, length, 1, 1))
    else:
        mask, real = None, np.ones((3, length, 1, 1))
    probe = jnp.asarray(rng.normal(size=query.shape), jnp.float32) * real  # padded queries' outputs are not compared

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")

    def by_lengths(q, k, v):
        return attention_by_lengths(
            q, k, v, mask=mask, is_causal=causal, padded_length=padded_length, implementation="xla"
        )

    ours_out, theirs_out = jax.jit(by_lengths)(query, key, value), jax.jit(reference)(query, key, value)
    assert ours_out.shape == theirs_out.shape == query.shape
    np.testing.assert_allclose(ours_out * real, theirs_out * real, atol=1e-6)
    ours = jax.jit(jax.grad(lambda *qkv: jnp.sum(by_lengths(*qkv) * probe), argnums=(0, 1, 2)))(query, key, value)
    theirs = jax.jit(jax.grad(lambda *qkv: jnp.sum(reference(*qkv) * probe), argnums=(0, 1, 2)))(query, key, value)
    for mine, expected in zip(ours, theirs):
        np.testing.assert_allclose(mine, expected, atol=1e-6)


@pytest.fixture
def cudnn_path_on_this_cpu(monkeypatch):
    """The "cudnn" choice runs `attention_by_lengths` through XLA's kernel here; records each call."""
    calls = []
    by_lengths = attention.attention_by_lengths

    def through_xla(*args, **kwargs):
        calls.append(kwargs["padded_length"])
        return by_lengths(*args, **(kwargs | {"implementation": "xla"}))

    monkeypatch.setattr(attention, "attention_by_lengths", through_xla)
    monkeypatch.setattr(attention, "CUDNN_LENGTH_MULTIPLE", 8)
    return calls


def loss_and_gradients(model, batch):
    graphdef, params = nnx.split(model, nnx.Param)
    return jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch)[0]))(params)


@pytest.mark.parametrize("family", ["gpt", "bert", "vit"])
def test_each_family_on_the_fused_path_equals_the_reference_in_loss_and_gradients(family, cudnn_path_on_this_cpu):
    rng = np.random.default_rng(0)
    if family == "vit":
        build = lambda implementation: ViTForImageClassification(  # noqa: E731
            ViTConfig.tiny(attention_implementation=implementation), rngs=nnx.Rngs(0)
        )
        batch = {"images": jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32), "labels": jnp.array([1, 2])}
    else:
        model_class, config_class = (GPTForCausalLM, GPTConfig) if family == "gpt" else (BertForMaskedLM, BertConfig)
        build = lambda implementation: model_class(  # noqa: E731
            config_class.tiny(dropout=0.0, attention_implementation=implementation), rngs=nnx.Rngs(0)
        )
        token_ids = jnp.asarray(rng.integers(5, 512, (2, 13)), jnp.int32)
        batch = {"token_ids": token_ids, "padding_mask": right_padding([13, 9], 13)}
    loss_fused, grads_fused = loss_and_gradients(build("cudnn"), batch)
    # GPT sees 12 tokens, BERT 13, ViT 17, each padded to a multiple of 8 (heads' last layers take fewer queries)
    assert max(cudnn_path_on_this_cpu) == {"gpt": 16, "bert": 16, "vit": 24}[family]
    loss_reference, grads_reference = loss_and_gradients(build("xla"), batch)
    np.testing.assert_allclose(loss_fused, loss_reference, rtol=1e-6)
    for mine, expected in zip(jax.tree.leaves(grads_fused), jax.tree.leaves(grads_reference)):
        np.testing.assert_allclose(mine, expected, atol=1e-6)


@pytest.mark.parametrize("model_class", [GPTForCausalLM, BertForMaskedLM])
def test_a_padding_mask_that_is_not_right_padding_is_refused(model_class):
    config_class = GPTConfig if model_class is GPTForCausalLM else BertConfig
    model = model_class(config_class.tiny(), rngs=nnx.Rngs(0))
    left_padded = jnp.array([[False, True, True], [True, True, True]])
    with pytest.raises(ValueError, match="padding_mask row 0 is not right-padded"):
        model(jnp.ones((2, 3), jnp.int32), left_padded)
