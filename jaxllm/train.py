"""Training utilities: masked LM loss, a jitted train step, batching.

* `lm_loss_terms` / `lm_loss`: next-token cross-entropy where only positions
  with `loss_mask` set count as targets (e.g. solution tokens, not the prompt
  or the padding). Packed rows (several sequences per row) carry `segment_ids`
  and `positions`, and attention never crosses a segment boundary.
* `TrainState` (params, optax opt_state, step, rng) and `make_train_step`: one
  jitted update with AdamW + warmup-cosine + global-norm clipping
  (`make_optimizer`), optional gradient accumulation (a `lax.scan` over
  microbatches) and optional mixed precision (f32 master params, bf16 compute).
* Batching: `lm_example` / `pad_batch` (one sequence per row,
  bucketed length: `jaxllm.generate.bucket_length` with policy "multiple",
  the next multiple of 16) and `pack_batch` (first-fit packing into
  fixed-length rows).
* Token ids are checked on the host, with one message
  (`jaxllm.validation.check_token_ids`): by the batch builders (`lm_example`,
  `pad_batch`, `pack_batch`, `pack_stream`; against `vocab_size=` when given,
  else only integer ids in [0, 2**31)), and by `lm_loss_terms` / `lm_loss`
  when called with concrete arrays (against cfg.vocab_size). Inside jit (the
  train step) ids cannot be checked, and an id >= V gives a NaN loss: build
  batches with the builders and `vocab_size=`.
* `train_loop`: a step loop with periodic checkpoints, so a run that is
  interrupted and resumed gives exactly the same parameters as one that is not
  (the batch for step s must be a pure function of s; the rng lives in the
  state).

A loss function has the signature `loss_fn(params, batch, key) -> (loss_sum,
weight, aux)`: the train step divides the summed loss of all microbatches by
the summed weight, so accumulating A microbatches of B rows gives exactly the
gradient of one batch of A * B rows (a token-weighted mean, not a mean of
per-microbatch means).

Shape letters: B batch rows, T tokens per row, V vocab, A microbatches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import ModelConfig
from jaxllm.generate import bucket_length as _bucket_length
from jaxllm.model import forward
from jaxllm.validation import (
  INT32_LIMIT,
  check_token_id,
  check_token_ids,
  is_concrete,
  token_id_array,
)

# ---------------------------------------------------------------------------
# Loss.


def segment_attention_mask(segment_ids_BxT) -> jax.Array:
  """Causal mask that also blocks attention across packed segments."""
  T = segment_ids_BxT.shape[1]
  causal = jnp.tril(jnp.ones((T, T), bool))
  same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return causal[None] & same


def cast_params(params, dtype):
  """Floating-point leaves cast to `dtype` (the cast is differentiable, so
  gradients arrive in the master dtype)."""
  dtype = jnp.dtype(dtype)
  return jax.tree_util.tree_map(
    lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
  )


def compute_config(cfg: ModelConfig, compute_dtype: Optional[str]) -> ModelConfig:
  return cfg if compute_dtype is None else cfg.replace(dtype=compute_dtype)


def lm_loss_terms(
  params,
  cfg: ModelConfig,
  tokens_BxT,
  loss_mask_BxT,
  segment_ids_BxT=None,
  positions_BxT=None,
  compute_dtype: Optional[str] = None,
):
  """Summed next-token NLL over masked targets and the number of targets.

  Position t predicts token t+1; the target token t+1 counts iff
  loss_mask[t+1] (and, when packed, it belongs to the same segment as t).
  Returns (nll_sum, n_targets, n_correct) where n_correct counts targets the
  argmax predicts.

  Raises:
    ValueError: if the shapes differ, or, when `tokens_BxT` is concrete (not
      traced), if an id lies outside [0, cfg.vocab_size) (it would give a NaN
      loss; under jit check ids with the batch builders' `vocab_size=`).
  """
  inp = lm_inputs(
    params,
    cfg,
    tokens_BxT,
    loss_mask_BxT,
    segment_ids_BxT,
    positions_BxT,
    compute_dtype,
  )
  logits, _, _ = forward(
    inp.params,
    inp.inputs_BxT,
    inp.cfg,
    positions_BxT=inp.positions_BxT,
    attn_mask_BxTxT=inp.mask_BxTxT,
  )
  nll_sum, n_correct = nll_terms(logits, inp.targets_BxT, inp.weights_BxT)
  return nll_sum, inp.weights_BxT.sum(), n_correct


class LMInputs(NamedTuple):
  """What a next-token loss feeds the model and scores against (T' = T - 1)."""

  params: Any  # the parameters, cast to the compute dtype if one is given
  cfg: ModelConfig  # the config in the compute dtype
  inputs_BxT: Any  # tokens[:, :-1]
  positions_BxT: Any  # positions[:, :-1] when packed with positions, else None
  mask_BxTxT: Any  # the packed segments' attention mask, else None
  targets_BxT: Any  # tokens[:, 1:]
  weights_BxT: Any  # float32: 1 where the target counts (loss mask, same segment)


def lm_inputs(
  params,
  cfg: ModelConfig,
  tokens_BxT,
  loss_mask_BxT,
  segment_ids_BxT=None,
  positions_BxT=None,
  compute_dtype: Optional[str] = None,
) -> LMInputs:
  """The shared set-up of next-token losses (`lm_loss_terms`, the SoFT loss):
  position t predicts token t + 1, which counts iff loss_mask[t + 1] and, when
  packed, it is in t's segment.

  Raises:
    ValueError: as `lm_loss_terms`.
  """
  if tokens_BxT.shape != loss_mask_BxT.shape:
    raise ValueError(
      f"tokens {tokens_BxT.shape} and loss_mask "
      f"{loss_mask_BxT.shape} must have the same shape"
    )
  if is_concrete(tokens_BxT):
    check_token_ids("tokens_BxT", tokens_BxT, cfg.vocab_size)
  ccfg = compute_config(cfg, compute_dtype)
  if compute_dtype is not None:
    params = cast_params(params, compute_dtype)
  mask = pos = None
  if segment_ids_BxT is not None:
    mask = segment_attention_mask(segment_ids_BxT[:, :-1])
    pos = positions_BxT[:, :-1] if positions_BxT is not None else None
  w = loss_mask_BxT[:, 1:].astype(jnp.float32)
  if segment_ids_BxT is not None:
    w = w * (segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1])
  return LMInputs(params, ccfg, tokens_BxT[:, :-1], pos, mask, tokens_BxT[:, 1:], w)


def nll_terms(logits_BxTxV, targets_BxT, weights_BxT):
  """(summed weighted NLL in nats, weighted count of argmax-correct targets)
  of next-token logits (computed in float32)."""
  logits = logits_BxTxV.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == targets_BxT).astype(jnp.float32)
  return (nll * weights_BxT).sum(), (correct * weights_BxT).sum()


def lm_loss(
  params,
  cfg: ModelConfig,
  tokens_BxT,
  loss_mask_BxT,
  segment_ids_BxT=None,
  positions_BxT=None,
  compute_dtype: Optional[str] = None,
):
  """Mean next-token NLL over the masked targets (nats per target token).

  Raises ValueError like `lm_loss_terms` (ids outside [0, V) when concrete).
  """
  s, n, _ = lm_loss_terms(
    params,
    cfg,
    tokens_BxT,
    loss_mask_BxT,
    segment_ids_BxT,
    positions_BxT,
    compute_dtype,
  )
  return s / jnp.maximum(n, 1.0)


def make_lm_loss_fn(cfg: ModelConfig, compute_dtype: Optional[str] = None):
  """`loss_fn(params, batch, key)` for batches from `pad_batch`/`pack_batch`.

  Token ids are checked only when the batch is concrete (not inside jit);
  build batches with `vocab_size=cfg.vocab_size` to check them on the host.
  """

  def loss_fn(params, batch, key):
    del key
    s, n, c = lm_loss_terms(
      params,
      cfg,
      batch["tokens"],
      batch["loss_mask"],
      batch.get("segment_ids"),
      batch.get("positions"),
      compute_dtype=compute_dtype,
    )
    return s, n, {"correct": c}

  return loss_fn


# ---------------------------------------------------------------------------
# Optimiser and train state.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  params: Any
  opt_state: Any
  step: Any  # int32 scalar: updates applied so far
  rng: Any  # PRNG key, split once per step


def make_optimizer(
  learning_rate: float = 1e-3,
  *,
  warmup_steps: int = 100,
  total_steps: int = 1000,
  end_lr_ratio: float = 0.1,
  weight_decay: float = 0.1,
  b1: float = 0.9,
  b2: float = 0.95,
  clip_norm: Optional[float] = 1.0,
):
  """AdamW on a linear-warmup + cosine-decay schedule, after global-norm
  clipping. Weight decay skips 1-D leaves (norm weights, biases)."""
  if total_steps < 1 or warmup_steps < 0:
    raise ValueError(
      f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}"
    )
  warmup_steps = min(warmup_steps, total_steps)
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=learning_rate,
    warmup_steps=max(warmup_steps, 1),
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=learning_rate * end_lr_ratio,
  )
  decay_mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)
  parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
  parts.append(
    optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  )
  return optax.chain(*parts), schedule


def init_train_state(params, optimizer, key) -> TrainState:
  return TrainState(
    params=params, opt_state=optimizer.init(params), step=jnp.int32(0), rng=key
  )


def _split_micro(batch, accum_steps: int):
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(
        f"batch size {x.shape[0]} is not divisible by accum_steps={accum_steps}"
      )
    return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  return jax.tree_util.tree_map(split, batch)


def accumulate_grads(loss_fn, params, batch, key, accum_steps: int = 1):
  """Gradient of sum(loss) / sum(weight) over the whole batch, computed one
  microbatch at a time (a scan, so memory is one microbatch's activations).
  Returns (loss, weight, aux sums, grads)."""

  def one(p, b, k):
    s, w, aux = loss_fn(p, b, k)
    return s, (w, aux)

  vg = jax.value_and_grad(one, has_aux=True)
  if accum_steps == 1:
    (s, (w, aux)), g = vg(params, batch, key)
  else:
    micro = _split_micro(batch, accum_steps)
    keys = jax.random.split(key, accum_steps)
    zero_g = jax.tree_util.tree_map(jnp.zeros_like, params)
    (s0, (w0, aux0)) = jax.eval_shape(
      one, params, jax.tree_util.tree_map(lambda x: x[0], micro), keys[0]
    )
    zeros = lambda t: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), t)

    def body(carry, xs):
      s, w, aux, g = carry
      b, k = xs
      (si, (wi, auxi)), gi = vg(params, b, k)
      add = lambda a, c: jax.tree_util.tree_map(jnp.add, a, c)
      return (s + si, w + wi, add(aux, auxi), add(g, gi)), None

    (s, w, aux, g), _ = jax.lax.scan(
      body, (zeros(s0), zeros(w0), zeros(aux0), zero_g), (micro, keys)
    )
  inv = 1.0 / jnp.maximum(w, 1e-9)
  g = jax.tree_util.tree_map(lambda x: x * inv.astype(x.dtype), g)
  return s * inv, w, aux, g


def make_train_step(
  loss_fn: Callable, optimizer, *, accum_steps: int = 1, donate: bool = True
):
  """A jitted `step(state, batch) -> (state, metrics)`.

  metrics: loss (sum / weight), weight (e.g. target tokens), grad_norm, every
  aux sum divided by the weight (e.g. token accuracy), and `lr_step`.
  """
  if not isinstance(accum_steps, int) or accum_steps < 1:
    raise ValueError(f"accum_steps must be a positive int, got {accum_steps!r}")

  def step(state: TrainState, batch):
    rng, key = jax.random.split(state.rng)
    loss, w, aux, grads = accumulate_grads(
      loss_fn, state.params, batch, key, accum_steps
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "weight": w, "grad_norm": optax.global_norm(grads)}
    for k, v in aux.items():
      metrics[k] = v / jnp.maximum(w, 1e-9)
    new = TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=rng)
    return new, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------
# Batching.


# Training batches round to the next multiple of 16 (less padding than the
# prompts' powers of two). The one bucketing function lives in jaxllm.generate;
# this is it with the training policy preset, kept under its old name for
# existing callers: bucket_length(n, buckets=None, *, multiple=16).
bucket_length = functools.partial(_bucket_length, policy="multiple")


def _id_limit(vocab_size: Optional[int]) -> int:
  """Upper bound (exclusive) for token ids: V, or the int32 range."""
  return INT32_LIMIT + 1 if vocab_size is None else vocab_size


def _token_list(name: str, ids, vocab_size: Optional[int]) -> np.ndarray:
  """`ids` as a checked 1-D int64 array (ValueError naming `name`)."""
  arr = token_id_array(name, ids)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a flat list of token ids, got shape {arr.shape}")
  return check_token_ids(name, arr, _id_limit(vocab_size))


def lm_example(
  prompt_ids: Sequence[int],
  completion_ids: Sequence[int],
  vocab_size: Optional[int] = None,
):
  """(tokens, loss_mask) of one prompt + completion: only completion tokens
  are targets.

  Raises:
    ValueError: naming `prompt_ids` / `completion_ids` if an id is not an
      integer in [0, vocab_size) ([0, 2**31) when vocab_size is None).
  """
  tokens = (
    _token_list("prompt_ids", prompt_ids, vocab_size).tolist()
    + _token_list("completion_ids", completion_ids, vocab_size).tolist()
  )
  mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
  return tokens, mask


def _as_examples(examples, fields, vocab_size: Optional[int] = None):
  """Normalise examples to (tokens, field_1, ...) tuples of equal lengths; a
  bare token list gets an all-ones first field. Token ids are checked against
  vocab_size (the int32 range when None)."""
  out = []
  for i, e in enumerate(examples):
    if not isinstance(e, tuple):
      e = (list(e),) + tuple([1] * len(e) for _ in fields)
    if len(e) != 1 + len(fields):
      raise ValueError(
        f"example {i} has {len(e)} parts, expected tokens + {list(fields)}"
      )
    if any(len(f) != len(e[0]) for f in e[1:]):
      raise ValueError(f"example {i}: tokens and {list(fields)} lengths differ")
    e = (_token_list(f"examples[{i}] tokens", e[0], vocab_size),) + tuple(e[1:])
    out.append(e)
  if not out:
    raise ValueError("examples is empty")
  return out


def _field_dtype(values) -> np.dtype:
  return np.float32 if any(isinstance(v, float) for v in values) else np.int32


def pad_batch(
  examples,
  length: Optional[int] = None,
  pad_id: int = 0,
  buckets: Optional[Sequence[int]] = None,
  fields: Sequence[str] = ("loss_mask",),
  vocab_size: Optional[int] = None,
):
  """One example per row, right-padded to `length` (default: bucketed max).

  examples: (tokens, loss_mask) pairs (`lm_example`), or token lists (then
  every token is a target), or tuples (tokens, *per-token fields) named by
  `fields` (e.g. ("label_mask", "labels") for reward models). Padding gets 0
  in every field, so it is never a target. Returns numpy arrays [B, T].

  Raises:
    ValueError: naming `pad_id` or `examples[i] tokens` if an id is not an
      integer in [0, vocab_size) ([0, 2**31) when vocab_size is None; pass the
      model's vocab_size to rule out a NaN loss), or if an example is longer
      than `length`.
  """
  pad_id = check_token_id("pad_id", pad_id, _id_limit(vocab_size))
  exs = _as_examples(examples, fields, vocab_size)
  longest = max(len(e[0]) for e in exs)
  T = _bucket_length(longest, buckets, policy="multiple") if length is None else length
  if longest > T:
    raise ValueError(
      f"an example has {longest} tokens, longer than the batch length {T}"
    )
  out = {"tokens": np.full((len(exs), T), pad_id, np.int32)}
  for j, f in enumerate(fields):
    out[f] = np.zeros((len(exs), T), _field_dtype([v for e in exs for v in e[j + 1]]))
  for i, e in enumerate(exs):
    n = len(e[0])
    out["tokens"][i, :n] = e[0]
    for j, f in enumerate(fields):
      out[f][i, :n] = e[j + 1]
  return out


def pack_batch(
  examples,
  length: int,
  rows: Optional[int] = None,
  pad_id: int = 0,
  fields: Sequence[str] = ("loss_mask",),
  vocab_size: Optional[int] = None,
):
  """First-fit packing of examples into rows of `length` tokens.

  Returns tokens, the per-token `fields` (see `pad_batch`), segment_ids (1, 2,
  ... per example in a row; 0 for padding) and positions (restarting at 0 per
  example), all [R, length]. With `rows` given, exactly that many rows are
  returned and an example that does not fit raises ValueError. Token ids and
  `pad_id` are checked as in `pad_batch` (ValueError naming them).
  """
  pad_id = check_token_id("pad_id", pad_id, _id_limit(vocab_size))
  exs = _as_examples(examples, fields, vocab_size)
  fill: list[int] = []
  place = []
  for i, e in enumerate(exs):
    n = len(e[0])
    if n > length:
      raise ValueError(f"example {i} has {n} tokens > length {length}")
    r = next((r for r, f in enumerate(fill) if f + n <= length), None)
    if r is None:
      if rows is not None and len(fill) == rows:
        raise ValueError(f"examples do not fit in {rows} rows of {length}")
      fill.append(0)
      r = len(fill) - 1
    place.append((r, fill[r]))
    fill[r] += n
  R = rows if rows is not None else len(fill)
  out = {"tokens": np.full((R, length), pad_id, np.int32)}
  for j, f in enumerate(fields):
    out[f] = np.zeros((R, length), _field_dtype([v for e in exs for v in e[j + 1]]))
  out["segment_ids"] = np.zeros((R, length), np.int32)
  out["positions"] = np.zeros((R, length), np.int32)
  nseg = [0] * R
  for e, (r, o) in zip(exs, place):
    n = len(e[0])
    nseg[r] += 1
    out["tokens"][r, o : o + n] = e[0]
    for j, f in enumerate(fields):
      out[f][r, o : o + n] = e[j + 1]
    out["segment_ids"][r, o : o + n] = nseg[r]
    out["positions"][r, o : o + n] = np.arange(n)
  return out


def pack_stream(
  examples,
  length: int,
  rows: int,
  fields: Sequence[str] = ("loss_mask",),
  pad_id: int = 0,
  vocab_size: Optional[int] = None,
):
  """Pack examples from an iterator first-fit into `rows` rows of `length`
  tokens until the next example fits nowhere (static shapes, variable count).
  Returns (batch as in `pack_batch`, number of examples packed). Ids are
  checked as in `pack_batch`."""
  fill = [0] * rows
  taken = []
  for ex in examples:
    t = ex[0] if isinstance(ex, tuple) else ex
    if len(t) > length:
      raise ValueError(f"an example has {len(t)} tokens > length {length}")
    if not any(f + len(t) <= length for f in fill):
      break
    r = next(r for r, f in enumerate(fill) if f + len(t) <= length)
    fill[r] += len(t)
    taken.append(ex)
  if not taken:
    raise ValueError("no example was packed")
  return pack_batch(
    taken, length, rows=rows, pad_id=pad_id, fields=fields, vocab_size=vocab_size
  ), len(taken)


# ---------------------------------------------------------------------------
# The loop.


def format_eta(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  m, s = divmod(seconds, 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_loop(
  state: TrainState,
  step_fn,
  batch_fn: Callable[[int], Any],
  num_steps: int,
  *,
  checkpoint_manager=None,
  log_every: int = 0,
  log_fn: Callable[[str], None] = print,
  eval_every: int = 0,
  eval_fn: Optional[Callable] = None,
  tokens_fn: Optional[Callable[[Any], int]] = None,
):
  """Run steps state.step .. num_steps-1 and return (state, history).

  batch_fn(step) must be a pure function of the step (e.g. a numpy Generator
  seeded with (seed, step)), so a resumed run sees the same data as an
  uninterrupted one. `checkpoint_manager` (optional) is a
  `jaxllm.checkpoint.CheckpointManager`: it is offered every step (it saves
  every `save_every` steps) and forced after the last one. `eval_fn(state) ->
  dict` runs every `eval_every` steps. Progress lines report loss, tokens/s
  (of `tokens_fn(batch)`, default all tokens) and ETA.
  """
  start = int(state.step)
  history = []
  t0 = time.perf_counter()
  t_last, tok_since = t0, 0
  done_since = 0
  for s in range(start, num_steps):
    batch = batch_fn(s)
    n_tok = tokens_fn(batch) if tokens_fn else int(np.prod(np.shape(batch["tokens"])))
    state, metrics = step_fn(state, batch)
    tok_since += n_tok
    done_since += 1
    step = s + 1
    rec = None
    if log_every and (step % log_every == 0 or step == num_steps):
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      rate = done_since / max(now - t_last, 1e-9)
      tps = tok_since / max(now - t_last, 1e-9)
      eta = (num_steps - step) / max(rate, 1e-9)
      rec = {
        "step": step,
        **{k: float(v) for k, v in metrics.items()},
        "tokens_per_s": tps,
        "elapsed_s": now - t0,
      }
      log_fn(
        f"step {step}/{num_steps} loss {rec['loss']:.4f} "
        f"tok/s {tps:,.0f} eta {format_eta(eta)}"
      )
      t_last, tok_since, done_since = now, 0, 0
    if (
      eval_every
      and eval_fn is not None
      and (step % eval_every == 0 or step == num_steps)
    ):
      ev = eval_fn(state)
      rec = dict(rec or {"step": step}, **ev)
      log_fn(f"step {step} eval " + " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
      t_last = time.perf_counter()  # do not count eval time in tokens/s
    if rec is not None:
      history.append(rec)
    if checkpoint_manager is not None:
      checkpoint_manager.save(
        step, state.params, state.opt_state, state.rng, force=step == num_steps
      )
  if checkpoint_manager is not None:
    checkpoint_manager.wait_until_finished()
  return state, history


def restore_train_state(
  checkpoint_manager,
  cfg: ModelConfig,
  state_like: TrainState,
  step: Optional[int] = None,
) -> TrainState:
  """The TrainState saved at `step` (default latest) by `train_loop`.
  `state_like` supplies the optimiser-state structure (e.g. a fresh state)."""
  params, opt_state, step, rng = checkpoint_manager.restore(
    cfg, state_like.opt_state, step=step
  )
  return TrainState(params=params, opt_state=opt_state, step=jnp.int32(step), rng=rng)


def step_rng(seed: int, step: int) -> np.random.Generator:
  """A numpy Generator that depends only on (seed, step): deterministic data
  order that survives interruption."""
  return np.random.default_rng([int(seed), int(step)])


def num_params(params) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
