#!/usr/bin/env python
"""A/B measurements of speed levers for flaxen's training step, all variants in ONE process, in alternation.

    python benchmarks/levers.py MODE [--models gpt,bert,vit] [--steps N] [--warmup N]

MODE
  breakdown  forward / forward+backward / full step, flaxen vs HF eager: where the step's time goes
  xla        the real Trainer step compiled with different XLA:CPU options (`Lowered.compile(compiler_options=...)`,
             the same options XLA_FLAGS sets, but per executable, so the variants can alternate)
  dtype      Trainer(compute_dtype=None) vs "bfloat16" (with and without the YNN dot fusions)
  head       BERT MLM head at the 20 chosen slots (flaxen today) vs at all 128 positions
  proto      prototypes of src changes, monkeypatched: see PROTOTYPES below
  layers     config.scan_layers / config.remat against the plain layer loop: compile time, XLA temp memory, speed
  solo       the Trainer step alone, for settings that are per process (XLA_FLAGS such as a device count,
             PJRT_NPROC, GLIBC_TUNABLES): run it once per setting, back to back, and compare the medians

Every row is a JSON line on stdout (median step seconds per variant, ratio to the first variant, load average);
a Markdown table follows. Results and predictions are written up in benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__" and os.environ.get("FLAXEN_ALLOCATOR") != "system":  # measure under the allocator flaxen uses
    from flaxen.runtime import relaunch_with_fast_allocator

    relaunch_with_fast_allocator()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import run as bench  # noqa: E402  (benchmarks/run.py: sizes, timing helpers)
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from flaxen import BertConfig, BertForMaskedLM, GPTConfig, GPTForCausalLM, ViTConfig, ViTForImageClassification  # noqa: E402
from flaxen.train import Trainer, adamw  # noqa: E402

ROWS: list[dict[str, Any]] = []


def emit(row: dict[str, Any]) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------------------- the flaxen side
def build(model_name: str, seed: int = 0, **overrides) -> tuple[nnx.Module, list[dict[str, np.ndarray]], int]:
    """(model, host batches, items per step) at the benchmark sizes of run.py; `overrides` change the config."""
    rng = np.random.default_rng(seed)
    if model_name == "gpt":
        model = GPTForCausalLM(GPTConfig.small(dropout=0.0, **overrides), rngs=nnx.Rngs(seed))
        batches = [
            {"token_ids": rng.integers(0, bench.VOCAB, (bench.LM_BATCH, bench.CONTEXT + 1), dtype=np.int32)}
            for _ in range(4)
        ]
        return model, batches, bench.LM_BATCH * bench.CONTEXT
    if model_name == "bert":
        config = BertConfig.small(dropout=0.0, **overrides)
        model = BertForMaskedLM(config, rngs=nnx.Rngs(seed))
        batches = []
        for _ in range(4):
            ids = rng.integers(
                max(config.special_token_ids) + 1, bench.VOCAB, (bench.LM_BATCH, bench.CONTEXT), dtype=np.int32
            )
            ids[:, 0], ids[:, -1] = 2, 3
            batches.append({"token_ids": ids})
        return model, batches, bench.LM_BATCH * bench.CONTEXT
    if model_name == "vit":
        model = ViTForImageClassification(ViTConfig.small(dropout=0.0, **overrides), rngs=nnx.Rngs(seed))
        batches = [
            {
                "images": rng.standard_normal((bench.VIT_BATCH, 32, 32, 3), dtype=np.float32),
                "labels": rng.integers(0, 10, (bench.VIT_BATCH,), dtype=np.int32),
            }
            for _ in range(4)
        ]
        return model, batches, bench.VIT_BATCH
    raise ValueError(model_name)


def optimizer() -> optax.GradientTransformation:
    return adamw(bench.LR, weight_decay=bench.WEIGHT_DECAY, b1=bench.BETAS[0], b2=bench.BETAS[1], clip_norm=bench.CLIP)


class Step:
    """One variant of the training step with its own (donated) state; `fn` has Trainer._train_step's signature."""

    def __init__(self, fn: Callable, model: nnx.Module, batches, opt: optax.GradientTransformation):
        self.fn = fn
        params, other = nnx.state(model, nnx.Param, ...)
        self.params = jax.tree.map(jnp.copy, params)
        self.other = jax.tree.map(jnp.copy, other)
        self.opt_state = opt.init(self.params)
        self.batches = batches
        self.key = jax.random.key(0)
        self.index = 0

    def args(self):
        return self.params, self.opt_state, self.other, jax.device_put(self.batches[0]), self.key, 0

    def __call__(self) -> float:
        batch = self.batches[self.index % len(self.batches)]
        start = time.perf_counter()
        self.params, self.opt_state, self.other, metrics = self.fn(
            self.params, self.opt_state, self.other, jax.device_put(batch), self.key, self.index
        )
        jax.block_until_ready(metrics)
        self.index += 1
        return time.perf_counter() - start


def trainer_step(model: nnx.Module, opt, compute_dtype=None) -> Callable:
    with _tmpdir() as out:
        return Trainer(model, opt, out, progress=False, compute_dtype=compute_dtype)._train_step


@contextlib.contextmanager
def _tmpdir():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flaxen-levers-") as out:
        yield out


def compiled_variant(model, batches, opt, jitted: Callable, options: dict[str, Any]) -> tuple[Step, float]:
    """`jitted` lowered once and compiled with XLA `options`; returns the step and the compile seconds."""
    step = Step(None, model, batches, opt)
    start = time.perf_counter()
    lowered = jitted.lower(*step.args())
    step.lower_s = time.perf_counter() - start  # trace + lower to StableHLO
    start = time.perf_counter()
    step.fn = lowered.compile(compiler_options=options)
    return step, time.perf_counter() - start


def compare(
    label: str, model_name: str, items: int, variants: dict[str, Callable[[], float]], args, extra=None
) -> None:
    """Alternate the variants, emit one row: median seconds, items/s and the ratio of speeds to the first variant."""
    load_start = bench.loadavg()
    bench.info(f"{label} / {model_name}: {', '.join(variants)}")
    timings = bench.interleaved(variants, warmup=args.warmup, timed=args.steps, per_round=2, wait_quiet=args.wait_quiet)
    stats, basis = bench.chosen_stats(timings)
    first = next(iter(stats))
    emit(
        {
            "lever": label,
            "model": model_name,
            "items_per_s": {name: round(items / s["median_s"], 1) for name, s in stats.items()},
            "speedup_vs_" + first: {
                name: round(stats[first]["median_s"] / s["median_s"], 3) for name, s in stats.items()
            },
            "step_time": stats,
            **(extra or {}),
            **basis,
            "loadavg_start": load_start,
            "loadavg_end": bench.loadavg(),
        }
    )


# ---------------------------------------------------------------------------------------------- modes
XLA_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "ynn off (Eigen dots)": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "ynn dot only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynn dot+eltwise+reduce": {
        "xla_cpu_experimental_ynn_fusion_type": (
            "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
        )
    },
    "xnn graph greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "onednn (ynn off)": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True},
    "fast math": {"xla_cpu_enable_fast_math": True},
    "vector width 512": {"xla_cpu_prefer_vector_width": 512},
}


def mode_xla(args) -> None:
    chosen = {k: v for k, v in XLA_VARIANTS.items() if not args.variants or k in args.variants}
    for model_name in args.models:
        model, batches, items = build(model_name)
        opt = optimizer()
        jitted = trainer_step(model, opt)
        variants, compile_s = {}, {}
        for name, options in chosen.items():
            try:
                variants[name], compile_s[name] = compiled_variant(model, batches, opt, jitted, options)
            except Exception as error:  # an option this jaxlib rejects
                bench.info(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
        compare(
            "xla",
            model_name,
            items,
            variants,
            args,
            {"compile_s": {k: round(v, 2) for k, v in compile_s.items()}, "options": {k: chosen[k] for k in variants}},
        )


def mode_dtype(args) -> None:
    for model_name in args.models:
        model, batches, items = build(model_name)
        opt = optimizer()
        fp32 = trainer_step(model, opt)
        bf16 = trainer_step(model, opt, "bfloat16")
        off = {"xla_cpu_experimental_ynn_fusion_type": ""}
        variants = {
            "fp32": compiled_variant(model, batches, opt, fp32, {})[0],
            "bf16": compiled_variant(model, batches, opt, bf16, {})[0],
            "bf16, ynn off": compiled_variant(model, batches, opt, bf16, off)[0],
            "bf16, oneDNN": compiled_variant(model, batches, opt, bf16, off | {"xla_cpu_use_onednn": True})[0],
        }
        compare("dtype", model_name, items, variants, args)


def mode_head(args) -> None:
    """BERT: last layer and MLM head at the static slots (today) vs the HF way (both at every position, loss at the
    masked ones). Since `output_positions`, the difference includes the last layer's saving, not the head's alone."""
    from flaxen.core.losses import accuracy, cross_entropy
    from flaxen.core.mlm import mask_tokens
    from flaxen.core.rng import as_rngs
    from flaxen.models.bert import modeling

    def full_head_loss(self, batch, *, rngs=None):
        config = self.config
        rngs = as_rngs(rngs)
        token_ids = batch["token_ids"]
        special_mask = jnp.isin(token_ids, jnp.asarray(config.special_token_ids))
        masked = mask_tokens(
            token_ids,
            special_mask,
            rngs.masking(),
            mask_token_id=config.mask_token_id,
            vocab_size=config.vocab_size,
            special_token_ids=config.special_token_ids,
            mask_rate=config.mask_rate,
        )
        hidden = self.bert(masked.token_ids, None, None, rngs=rngs)
        logits = self.lm_head(hidden, self.bert.token_embedding, rngs=rngs)  # (B, T, V) at every position
        rows = jnp.arange(token_ids.shape[0])[:, None]
        labels = jnp.zeros(token_ids.shape, jnp.int32).at[rows, masked.positions].set(masked.labels)
        weights = jnp.zeros(token_ids.shape, jnp.float32).at[rows, masked.positions].set(masked.weights)
        loss = cross_entropy(logits, labels, weights)
        return loss, {"loss": loss, "accuracy": accuracy(logits, labels, weights)}

    model, batches, items = build("bert")
    opt = optimizer()
    slots = trainer_step(model, opt)
    original = modeling.BertForMaskedLM.loss
    modeling.BertForMaskedLM.loss = full_head_loss
    try:
        full = compiled_variant(model, batches, opt, trainer_step(model, opt), {})[0]
    finally:
        modeling.BertForMaskedLM.loss = original
    compare(
        "head",
        "bert",
        items,
        {
            "last layer + head at 20 slots/row": compiled_variant(model, batches, opt, slots, {})[0],
            "head at all 128 positions": full,
        },
        args,
    )


def _gpt_loss_without_accuracy(self, batch, *, rngs=None):
    from flaxen.core.losses import cross_entropy

    token_ids = batch["token_ids"]
    logits = self(token_ids[:, :-1], rngs=rngs)
    loss = cross_entropy(logits, token_ids[:, 1:])
    return loss, {"loss": loss}


def _gpt_loss_cheap_accuracy(self, batch, *, rngs=None):
    """Accuracy as 'the target's logit is the maximum' (the max is already computed for the log-sum-exp), no argmax."""
    from flaxen.core.losses import cross_entropy

    token_ids = batch["token_ids"]
    logits = self(token_ids[:, :-1], rngs=rngs)
    targets = token_ids[:, 1:]
    loss = cross_entropy(logits, targets)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    accuracy = jnp.mean((target_logit >= logits.max(axis=-1)).astype(jnp.float32))
    return loss, {"loss": loss, "accuracy": accuracy}


def _plain_adamw() -> optax.GradientTransformation:
    """optax.adamw with the same mask and clip but no inject_hyperparams (constant learning rate)."""
    from flaxen.train.optim import matrices_only

    return optax.chain(
        optax.clip_by_global_norm(bench.CLIP),
        optax.adamw(
            bench.LR, b1=bench.BETAS[0], b2=bench.BETAS[1], weight_decay=bench.WEIGHT_DECAY, mask=matrices_only
        ),
    )


def mode_proto(args) -> None:
    """Prototypes of src changes, each A/B against today's step."""
    from flaxen.models.gpt import modeling as gpt_modeling

    for model_name in args.models:
        model, batches, items = build(model_name)
        opt = optimizer()
        variants = {"today": compiled_variant(model, batches, opt, trainer_step(model, opt), {})[0]}
        plain = _plain_adamw()
        variants["optax.adamw without inject_hyperparams"] = compiled_variant(
            model, batches, plain, trainer_step(model, plain), {}
        )[0]
        if model_name == "gpt":
            original = gpt_modeling.GPTForCausalLM.loss
            gpt_modeling.GPTForCausalLM.loss = _gpt_loss_without_accuracy
            try:
                variants["no accuracy metric"] = compiled_variant(model, batches, opt, trainer_step(model, opt), {})[0]
                gpt_modeling.GPTForCausalLM.loss = _gpt_loss_cheap_accuracy
                variants["accuracy = target logit is the max"] = compiled_variant(
                    model, batches, opt, trainer_step(model, opt), {}
                )[0]
            finally:
                gpt_modeling.GPTForCausalLM.loss = original
        compare("proto", model_name, items, variants, args)


def mode_breakdown(args) -> None:
    """Forward, forward+backward and the full step, flaxen vs HF eager, each in alternation."""
    for model_name in args.models:
        model, batches, items = build(model_name)
        opt = optimizer()
        full = compiled_variant(model, batches, opt, trainer_step(model, opt), {})[0]
        model.train()
        graphdef, params, other = nnx.split(model, nnx.Param, ...)
        key = jax.random.key(0)

        def loss_of(params, batch):
            m = nnx.merge(graphdef, params, other)
            return m.loss(batch, rngs=nnx.Rngs(dropout=key, masking=key))[0]

        forward = jax.jit(loss_of)
        backward = jax.jit(jax.value_and_grad(loss_of))
        device_batches = [jax.device_put(b) for b in batches]

        def timed(fn):
            def call():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, device_batches[0]))
                return time.perf_counter() - start

            return call

        peer_forward, peer_backward, peer_full = _peer_parts(model_name)
        compare(
            "breakdown",
            model_name,
            items,
            {
                "flaxen forward": timed(forward),
                "HF forward": peer_forward,
                "flaxen fwd+bwd": timed(backward),
                "HF fwd+bwd": peer_backward,
                "flaxen step": full,
                "HF step": peer_full,
            },
            args,
        )


def _peer_parts(model_name: str):
    """HF eager forward (no_grad), forward+backward, and full step, at the run.py sizes."""
    import torch.nn.functional as F
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM as HFBert
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification as HFViT

    torch.manual_seed(0)
    if model_name == "gpt":
        config = GPT2Config(
            vocab_size=bench.VOCAB,
            n_positions=bench.CONTEXT,
            n_embd=bench.WIDTH,
            n_layer=bench.LAYERS,
            n_head=bench.HEADS,
            n_inner=bench.MLP,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
        ids = torch.randint(0, bench.VOCAB, (bench.LM_BATCH, bench.CONTEXT + 1))

        def loss():
            return F.cross_entropy(model(input_ids=ids[:, :-1]).logits.reshape(-1, bench.VOCAB), ids[:, 1:].reshape(-1))
    elif model_name == "bert":
        config = HFBertConfig(
            vocab_size=bench.VOCAB,
            hidden_size=bench.WIDTH,
            num_hidden_layers=bench.LAYERS,
            num_attention_heads=bench.HEADS,
            intermediate_size=bench.MLP,
            max_position_embeddings=bench.CONTEXT,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=0,
        )
        model = HFBert._from_config(config, attn_implementation="sdpa")
        ids = torch.randint(5, bench.VOCAB, (bench.LM_BATCH, bench.CONTEXT))
        labels = torch.where(torch.rand(ids.shape) < 0.15, ids, -100)

        def loss():
            return model(input_ids=ids, labels=labels).loss
    else:
        config = HFViTConfig(
            image_size=32,
            patch_size=4,
            num_channels=3,
            hidden_size=bench.WIDTH,
            num_hidden_layers=bench.LAYERS,
            num_attention_heads=bench.HEADS,
            intermediate_size=bench.MLP,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=10,
        )
        model = HFViT._from_config(config, attn_implementation="sdpa")
        pixels, targets = torch.randn(bench.VIT_BATCH, 3, 32, 32), torch.randint(0, 10, (bench.VIT_BATCH,))

        def loss():
            return model(pixel_values=pixels, labels=targets).loss

    model.train()
    optimizer_, _ = bench.torch_adamw(model)
    params = list(model.parameters())

    def forward():
        start = time.perf_counter()
        with torch.no_grad():
            loss()
        return time.perf_counter() - start

    def backward():
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss().backward()
        return time.perf_counter() - start

    def full():
        start = time.perf_counter()
        optimizer_.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(params, bench.CLIP, foreach=True)
        optimizer_.step()
        return time.perf_counter() - start

    return forward, backward, full


LAYER_VARIANTS = {
    "loop": {},
    "scan": {"scan_layers": True},
    "remat": {"remat": True},
    "scan+remat": {"scan_layers": True, "remat": True},
}


def mode_layers(args) -> None:
    """config.scan_layers / config.remat: compile seconds, XLA temp memory and step time, at 4 and --deep layers."""
    for model_name in args.models:
        for layers in (None, args.deep):
            depth = {} if layers is None else {"num_layers": layers}
            variants, compile_s, lower_s, temp_mb = {}, {}, {}, {}
            for name, switches in LAYER_VARIANTS.items():
                model, batches, items = build(model_name, **depth, **switches)
                opt = optimizer()
                variants[name], compile_s[name] = compiled_variant(model, batches, opt, trainer_step(model, opt), {})
                lower_s[name] = round(variants[name].lower_s, 2)
                temp_mb[name] = round(variants[name].fn.memory_analysis().temp_size_in_bytes / 2**20, 1)
            compare(
                "layers",
                f"{model_name} ({model.config.num_layers} layers)",
                items,
                variants,
                args,
                {
                    "trace_lower_s": lower_s,
                    "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
                    "xla_temp_mb": temp_mb,
                },
            )


def mode_solo(args) -> None:
    """The Trainer step of each model, timed alone: the step takes a data-parallel mesh over all jax.devices()."""
    for model_name in args.models:
        model, batches, items = build(model_name)
        opt = optimizer()
        step, compile_s = compiled_variant(model, batches, opt, trainer_step(model, opt), {})
        for _ in range(args.warmup):
            step()
        stats = bench.summary([step() for _ in range(args.steps)])
        print(
            json.dumps(
                {
                    "lever": "solo",
                    "model": model_name,
                    "devices": jax.device_count(),
                    **stats,
                    "items_per_s": round(items / stats["median_s"], 1),
                    "compile_s": round(compile_s, 2),
                    **{key: os.environ.get(key, "") for key in ("XLA_FLAGS", "PJRT_NPROC", "GLIBC_TUNABLES")},
                }
            ),
            flush=True,
        )


MODES = {
    "solo": mode_solo,
    "layers": mode_layers,
    "breakdown": mode_breakdown,
    "xla": mode_xla,
    "dtype": mode_dtype,
    "head": mode_head,
    "proto": mode_proto,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=list(MODES))
    parser.add_argument("--models", default="gpt,bert,vit")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait up to SECONDS for other processes to use < 0.25 cores",
    )
    parser.add_argument("--deep", type=int, default=12, help="layers mode: the deeper model's layer count")
    parser.add_argument("--variants", default="", help="xla mode: comma-separated subset of variant names")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    torch.set_num_threads(2)
    MODES[args.mode](args)
    print()
    for row in ROWS:
        speed = row[next(k for k in row if k.startswith("speedup_vs_"))]
        print(
            f"\n**{row['lever']} / {row['model']}** ({row['basis']}, others {row['other_cores_busy']} cores, "
            f"load {row['loadavg_start'][0]:.2f} → {row['loadavg_end'][0]:.2f})\n"
        )
        extra = [key for key in ("trace_lower_s", "compile_s", "xla_temp_mb") if key in row]
        print("| variant | items/s | median step s | speed vs first |" + "".join(f" {key} |" for key in extra))
        print("|---|---:|---:|---:|" + "---:|" * len(extra))
        for name, value in row["items_per_s"].items():
            print(
                f"| {name} | {value:,.1f} | {row['step_time'][name]['median_s']:.3f} | {speed[name]:.3f} |"
                + "".join(f" {row[key][name]} |" for key in extra)
            )


if __name__ == "__main__":
    main()
