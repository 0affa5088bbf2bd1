"""Adapting decoder-only checkpoints into an encoder-decoder (T5Gemma-style).

Sources:
  T5Gemma: Zhang et al. 2025, "Encoder-Decoder Gemma: Improving the
    Quality-Efficiency Trade-Off via Adaptation" (arXiv:2504.06225): encoder and
    decoder initialised from decoder-only checkpoints; balanced (same model for
    both, cross-attention from self-attention) or unbalanced (a bigger encoder,
    cross-attention random, a warm-up that trains only cross-attention);
    objectives PrefixLM (optionally with knowledge distillation from the
    decoder-only teacher) and UL2.
  UL2: Tay et al. 2022, "UL2: Unifying Language Learning Paradigms"
    (arXiv:2205.05131): a mixture of denoisers, R (regular span corruption: short
    spans, low rate), S (sequential: prefix LM) and X (extreme: spans >= 12 tokens
    or a corruption rate >= 30%), each announced by a mode token prepended to the
    input ([R], [S], [X]).
  T5 span corruption: Raffel et al. 2020, "Exploring the Limits of Transfer
    Learning with a Unified Text-to-Text Transformer" (JMLR 21): each corrupted
    span is replaced by one sentinel in the input; the target lists every span
    after its sentinel.

What is here:
  Data (numpy, no model): `prefix_lm_split`, `random_spans`, `span_corrupt`,
    `Denoiser` / `ul2_example` (with `UL2Ids`, the sentinel and mode token ids,
    `reserved_ids` to take them from the top of a vocabulary), `encdec_batch`.
  Losses: `prefix_lm_loss_terms` / `make_prefix_lm_loss_fn` (cross-entropy on
    the decoder targets, optional KD), `kd_terms`, and the teacher's logits on
    the target positions (`teacher_sequences`, `make_teacher_fn`). Loss
    functions follow `jaxllm.train`'s signature, so `train.make_train_step`
    runs them unchanged.
  Initialisation: `balanced_init`, `unbalanced_init` (on top of
    `jaxllm.encdec.encdec_from_decoders`), `extend_vocab` (new ids for UL2's
    sentinels and modes).
  Warm-up: `cross_labels` / `cross_only` (an optax.multi_transform that applies
    the optimiser to cross-attention and zeroes every other update).

Shape letters: B rows, E encoder tokens, T decoder tokens, S teacher tokens,
V vocab, D width.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm import encdec, train
from jaxllm.config import ModelConfig
from jaxllm.encdec import EncDecConfig, EncDecParams
from jaxllm.model import forward as decoder_only_forward
from jaxllm.validation import check_token_ids

MODES = ("R", "S", "X")
# UL2's boundary between regular and extreme denoising (section 3.1.2): a span
# of at least 12 tokens or a corruption rate of at least 30% is extreme.
X_MIN_SPAN = 12
X_MIN_RATE = 0.3


def _is_int(x) -> bool:
  """A Python int or numpy integer, never a bool (True is not a token id)."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
  """A Python / numpy int or float, never a bool."""
  return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _id_tuple(name: str, ids) -> tuple:
  """`ids` (a list / tuple / 1-D array of ints) as a tuple of Python ints.

  Raises:
    ValueError: naming `name` for a string, None, a non-sequence or an element
      that is not an int (floats and bools are refused, not truncated).
  """
  if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      f"UL2Ids.{name} must be a sequence of int ids, got {type(ids).__name__} {ids!r}"
    )
  if isinstance(ids, np.ndarray) and ids.ndim != 1:
    raise ValueError(f"UL2Ids.{name} must be 1-D, got shape {ids.shape}")
  bad = [i for i in ids if not _is_int(i)]
  if bad:
    raise ValueError(f"UL2Ids.{name} ids must be ints, got {bad!r}")
  return tuple(int(i) for i in ids)


# ----------------------------------------------------------------------------------
# Token ids: sentinels and mode tokens
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UL2Ids:
  """The reserved ids of the UL2 transforms.

  Fields:
    sentinels: sentinel ids, sentinel i marks the i-th corrupted span (T5's
      <extra_id_i>); a sequence can have at most len(sentinels) spans.
    modes: {"R": id, "S": id, "X": id}, the mode tokens prepended to the input.
    vocab_size: V; every id must lie in [text_vocab, V).
    text_vocab: ids below it are text tokens no reserved id may reuse.

  Raises:
    ValueError: naming the field, for ids outside [text_vocab, vocab_size), a
      repeated id, no sentinel, modes without exactly the keys R, S, X, or an
      id that is not an int (strings, floats, bools and None are refused).
  """

  sentinels: tuple
  modes: dict
  vocab_size: int
  text_vocab: int = 0

  def __post_init__(self):
    if not _is_int(self.vocab_size) or self.vocab_size < 1:
      raise ValueError(
        f"UL2Ids.vocab_size must be an int >= 1, got {self.vocab_size!r}"
      )
    if not _is_int(self.text_vocab) or not 0 <= self.text_vocab <= self.vocab_size:
      raise ValueError(
        f"UL2Ids.text_vocab must be an int in [0, vocab_size={self.vocab_size}], "
        f"got {self.text_vocab!r}"
      )
    object.__setattr__(self, "sentinels", _id_tuple("sentinels", self.sentinels))
    if not self.sentinels:
      raise ValueError("UL2Ids.sentinels is empty: span corruption needs one per span")
    if not isinstance(self.modes, dict) or set(self.modes) != set(MODES):
      got = sorted(self.modes) if isinstance(self.modes, dict) else self.modes
      raise ValueError(f"UL2Ids.modes must map exactly {MODES} to ids, got {got!r}")
    modes = dict(zip(MODES, _id_tuple("modes", [self.modes[m] for m in MODES])))
    object.__setattr__(self, "modes", modes)
    for name, ids in (("sentinels", self.sentinels), ("modes", self.modes.values())):
      for i in ids:
        if not self.text_vocab <= int(i) < self.vocab_size:
          raise ValueError(
            f"UL2Ids.{name}: id {i} is outside the reserved range "
            f"[text_vocab={self.text_vocab}, vocab_size={self.vocab_size})"
          )
    every = list(self.sentinels) + [int(i) for i in self.modes.values()]
    if len(set(every)) != len(every):
      raise ValueError(f"UL2Ids: sentinel and mode ids must all differ, got {every}")

  @property
  def reserved(self) -> frozenset:
    return frozenset(self.sentinels) | frozenset(int(i) for i in self.modes.values())


def reserved_ids(vocab_size: int, n_sentinels: int, text_vocab: int = 0) -> UL2Ids:
  """UL2Ids at the top of a vocabulary: the mode tokens [R], [S], [X] are ids
  V-3, V-2, V-1 and sentinel i is V-4-i (counting down, as T5's extra ids).

  Raises:
    ValueError: naming `n_sentinels` when it is not an int >= 1 or the ids would
      reach below `text_vocab` (the text tokens).
  """
  if not _is_int(n_sentinels) or n_sentinels < 1:
    raise ValueError(f"n_sentinels must be an int >= 1, got {n_sentinels!r}")
  n_sentinels = int(n_sentinels)
  if vocab_size - len(MODES) - n_sentinels < text_vocab:
    raise ValueError(
      f"n_sentinels={n_sentinels} + {len(MODES)} mode ids do not fit above the "
      f"{text_vocab} text ids of a vocabulary of {vocab_size} (extend_vocab first)"
    )
  modes = {m: vocab_size - len(MODES) + i for i, m in enumerate(MODES)}
  sentinels = tuple(vocab_size - len(MODES) - 1 - i for i in range(n_sentinels))
  return UL2Ids(sentinels, modes, vocab_size, text_vocab)


def _tokens(name: str, tokens, ids: UL2Ids | None = None) -> np.ndarray:
  arr = np.asarray(tokens)
  if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
    raise ValueError(
      f"{name} must be a 1-D integer token array, got {arr.dtype} {arr.shape}"
    )
  arr = arr.astype(np.int64)
  if ids is not None:
    check_token_ids(name, arr, ids.vocab_size)
    clash = sorted(set(arr.tolist()) & ids.reserved)
    if clash:
      raise ValueError(f"{name} holds reserved sentinel / mode ids {clash}")
  return arr


# ----------------------------------------------------------------------------------
# PrefixLM and span corruption
# ----------------------------------------------------------------------------------


def prefix_lm_split(tokens, split: int, mode_id: int | None = None):
  """PrefixLM: the encoder reads tokens[:split], the decoder predicts
  tokens[split:] (T5Gemma's PrefixLM; UL2's S-denoiser with `mode_id`).

  Args:
    tokens: 1-D int token ids [N]. split: the prefix length, 1 <= split < N.
    mode_id: if given (an int id >= 0), prepended to the input (the [S] mode
      token).

  Returns:
    (inputs int64 [split (+1)], targets int64 [N - split]).

  Raises:
    ValueError: naming `tokens` (not 1-D ints, or fewer than 2 to split),
      `split` (not an int, out of range) or `mode_id` (not an int >= 0).
  """
  arr = _tokens("tokens", tokens)
  if len(arr) < 2:
    raise ValueError(f"tokens must hold >= 2 ids to split, got {len(arr)}")
  if not _is_int(split) or not 1 <= split < len(arr):
    raise ValueError(f"split must be an int in [1, {len(arr) - 1}], got {split!r}")
  if mode_id is not None and (not _is_int(mode_id) or mode_id < 0):
    raise ValueError(f"mode_id must be None or an int id >= 0, got {mode_id!r}")
  head = [] if mode_id is None else [int(mode_id)]
  return np.asarray(head + arr[:split].tolist(), np.int64), arr[split:].copy()


def _check_rate_span(rate, mean_span, who: str) -> None:
  if not _is_real(rate) or not 0.0 < rate < 1.0:
    raise ValueError(f"{who}rate must be a number in (0, 1), got {rate!r}")
  if not _is_real(mean_span) or not mean_span >= 1.0:
    raise ValueError(f"{who}mean_span must be a number >= 1, got {mean_span!r}")


def span_counts(length: int, rate: float, mean_span: float) -> tuple[int, int]:
  """(corrupted tokens, spans) of a sequence of `length` tokens: round(length *
  rate) tokens (at least 1, at most length - 1) in round(tokens / mean_span)
  spans (at least 1, at most one per token, and at most one more than the kept
  tokens, which must separate the spans), as T5's random_spans_noise_mask
  counts them.

  Raises:
    ValueError: naming `rate` / `mean_span` / `length` out of range (length >= 2).
  """
  _check_rate_span(rate, mean_span, "")
  if not _is_int(length) or length < 2:
    raise ValueError(f"length must be an int >= 2 to corrupt a span, got {length!r}")
  n_noise = min(max(round(length * rate), 1), length - 1)
  n_spans = max(round(n_noise / mean_span), 1)
  n_spans = min(n_spans, n_noise, length - n_noise + 1)
  return n_noise, n_spans


def _composition(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  """A uniformly random composition of n into k positive parts."""
  cuts = np.sort(rng.choice(n - 1, size=k - 1, replace=False) + 1) if k > 1 else []
  return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def random_spans(rng: np.random.Generator, length: int, rate: float, mean_span: float):
  """Random non-overlapping spans to corrupt (T5 / UL2 span corruption).

  The counts come from `span_counts`. The span lengths are a uniformly random
  composition of the corrupted tokens into that many positive parts (so each
  span has mean length exactly tokens / spans); the kept tokens are a uniformly
  random split into spans + 1 gaps, the inner gaps at least one token (spans
  never touch), the first and last possibly empty.

  Args:
    rng: numpy Generator (the only randomness). length: N tokens.
    rate: fraction of tokens corrupted, in (0, 1). mean_span: mean span length.

  Returns:
    (starts int64 [k], lengths int64 [k]), sorted by start.

  Raises:
    ValueError: as `span_counts`.
  """
  n_noise, k = span_counts(length, rate, mean_span)
  spans = _composition(rng, n_noise, k)
  extra = (length - n_noise) - (k - 1)  # kept tokens beyond the inner separators
  bars = np.sort(rng.choice(extra + k, size=k, replace=False))
  gaps = np.diff(np.concatenate([[-1], bars, [extra + k]])) - 1
  gaps[1:-1] += 1
  starts = gaps[0] + np.concatenate([[0], np.cumsum(spans[:-1] + gaps[1:-1])])
  return starts.astype(np.int64), spans


def span_corrupt(tokens, starts, lengths, sentinels: Sequence[int]):
  """T5 span corruption with given spans.

  The input is `tokens` with span i replaced by the single token sentinels[i];
  the target is, for every span in order, sentinels[i] followed by the span's
  tokens. Example: tokens [a b c d e f], spans (1, 2), (4, 1), sentinels
  [s0, s1] -> input [a s0 d s1 f], target [s0 b c s1 e].

  Args:
    tokens: 1-D int ids [N]. starts / lengths: int [k] spans, sorted,
      non-overlapping, inside [0, N), lengths >= 1. sentinels: >= k ids.

  Returns:
    (inputs int64 [N - sum(lengths) + k], targets int64 [sum(lengths) + k]).

  Raises:
    ValueError: naming `starts` / `lengths` / `sentinels` for spans out of
      order or range, or fewer sentinels than spans.
  """
  arr = _tokens("tokens", tokens)
  starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
  if starts.shape != lengths.shape or starts.ndim != 1:
    raise ValueError(
      f"starts {starts.shape} and lengths {lengths.shape} must be 1-D, equal"
    )
  if len(starts) > len(sentinels):
    raise ValueError(
      f"{len(starts)} spans need as many sentinels, got {len(sentinels)}"
    )
  if np.any(lengths < 1):
    raise ValueError(f"lengths must be >= 1, got {lengths.tolist()}")
  ends = starts + lengths
  if np.any(starts < 0) or np.any(ends > len(arr)) or np.any(starts[1:] < ends[:-1]):
    raise ValueError(
      f"starts {starts.tolist()} / lengths {lengths.tolist()} must be sorted, "
      f"non-overlapping spans inside [0, {len(arr)})"
    )
  inputs, targets, pos = [], [], 0
  for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
    inputs += arr[pos:s].tolist() + [int(sentinels[i])]
    targets += [int(sentinels[i])] + arr[s:e].tolist()
    pos = e
  inputs += arr[pos:].tolist()
  return np.asarray(inputs, np.int64), np.asarray(targets, np.int64)


# ----------------------------------------------------------------------------------
# UL2 denoisers
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One UL2 denoiser.

  Fields:
    mode: "R" (regular span corruption), "S" (sequential: prefix LM) or "X"
      (extreme span corruption).
    rate: R / X: fraction of tokens corrupted; S: mean fraction of the sequence
      in the target (the target length is uniform on [1, 2 round(rate N) - 1],
      clipped to N - 1).
    mean_span: R / X: mean span length in tokens (unused by S).

  Raises:
    ValueError: naming the field: an unknown mode, rate outside (0, 1),
      mean_span < 1, an "X" that is not extreme (needs mean_span >= 12 or rate
      >= 0.3, UL2 section 3.1.2) or an "R" that is.
  Source: Tay et al. 2022 (arXiv:2205.05131).
  """

  mode: str
  rate: float = 0.15
  mean_span: float = 3.0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Denoiser.mode must be one of {MODES}, got {self.mode!r}")
    _check_rate_span(self.rate, self.mean_span, "Denoiser.")
    extreme = self.mean_span >= X_MIN_SPAN or self.rate >= X_MIN_RATE
    if self.mode == "X" and not extreme:
      raise ValueError(
        f"Denoiser(mode='X'): mean_span={self.mean_span} < {X_MIN_SPAN} and "
        f"rate={self.rate} < {X_MIN_RATE} is not extreme (use mode 'R')"
      )
    if self.mode == "R" and extreme:
      raise ValueError(
        f"Denoiser(mode='R'): mean_span={self.mean_span} / rate={self.rate} is "
        f"extreme (mean_span >= {X_MIN_SPAN} or rate >= {X_MIN_RATE}: use mode 'X')"
      )


# UL2-style defaults: short spans at 15%, a prefix LM with a quarter of the text as
# target, long spans at 50% (the UL2 mixture has several R and X settings; these
# are one of each).
DEFAULT_DENOISERS = (
  Denoiser("R", rate=0.15, mean_span=3.0),
  Denoiser("S", rate=0.25),
  Denoiser("X", rate=0.5, mean_span=32.0),
)


def ul2_example(rng: np.random.Generator, tokens, denoiser: Denoiser, ids: UL2Ids):
  """One UL2 training pair: (mode token + corrupted input, target).

  R / X: `random_spans` at the denoiser's rate and mean span, then
  `span_corrupt`; S: `prefix_lm_split` at a random split (see Denoiser.rate).
  The mode token ids.modes[denoiser.mode] is prepended to the input.

  Args:
    rng: numpy Generator. tokens: 1-D int ids [N], N >= 2, none reserved.

  Returns:
    (inputs int64 [E], targets int64 [T]).

  Raises:
    ValueError: naming `rng` (not a numpy Generator), `tokens` (reserved or
      out-of-vocabulary ids, too short) or `ids.sentinels` (fewer than the
      spans drawn).
  Source: Tay et al. 2022 (arXiv:2205.05131); Raffel et al. 2020.
  """
  if not isinstance(denoiser, Denoiser) or not isinstance(ids, UL2Ids):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      "denoiser must be a Denoiser and ids a UL2Ids"
    )
  if not isinstance(rng, np.random.Generator):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      f"rng must be a numpy Generator (np.random.default_rng), got {type(rng).__name__}"
    )
  arr = _tokens("tokens", tokens, ids)
  if len(arr) < 2:
    raise ValueError(f"tokens must hold >= 2 ids to split, got {len(arr)}")
  mode = ids.modes[denoiser.mode]
  if denoiser.mode == "S":
    hi = min(max(2 * round(denoiser.rate * len(arr)) - 1, 1), len(arr) - 1)
    n_target = int(rng.integers(1, hi + 1))
    return prefix_lm_split(arr, len(arr) - n_target, mode_id=mode)
  starts, lengths = random_spans(rng, len(arr), denoiser.rate, denoiser.mean_span)
  if len(starts) > len(ids.sentinels):
    raise ValueError(
      f"ids.sentinels: {len(ids.sentinels)} sentinels for {len(starts)} spans "
      f"(N={len(arr)}, rate={denoiser.rate}, mean_span={denoiser.mean_span})"
    )
  inputs, targets = span_corrupt(arr, starts, lengths, ids.sentinels)
  return np.concatenate([[mode], inputs]).astype(np.int64), targets


# ----------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------


def encdec_batch(
  examples,
  start_id: int,
  vocab_size: int,
  pad_id: int = 0,
  enc_len: int | None = None,
  dec_len: int | None = None,
) -> dict:
  """Right-padded numpy arrays of (inputs, targets) pairs.

  Returns:
    {"enc_tokens" int32 [B, E], "enc_lengths" int32 [B], "dec_inputs" int32
    [B, T] (start_id then the targets shifted right, T5 / T5Gemma teacher
    forcing), "targets" int32 [B, T], "loss_mask" float32 [B, T] (1 on real
    targets)}. E and T: enc_len / dec_len, or (None) the bucketed longest
    (`train.bucket_length`).

  Raises:
    ValueError: naming the field: ids outside [0, vocab_size), an empty
      input or target, enc_len / dec_len not None or an int >= 1, or a pair
      longer than enc_len / dec_len.
  """
  for name, n in (("enc_len", enc_len), ("dec_len", dec_len)):
    if n is not None and (not _is_int(n) or n < 1):
      raise ValueError(
        f"{name} must be None (bucketed longest) or an int >= 1, got {n!r}"
      )
  check_token_ids("start_id", [start_id], vocab_size)
  check_token_ids("pad_id", [pad_id], vocab_size)
  if not examples:
    raise ValueError("examples is empty")
  ins, outs = [], []
  for i, (a, b) in enumerate(examples):
    ins.append(
      check_token_ids(f"examples[{i}] inputs", _tokens("inputs", a), vocab_size)
    )
    outs.append(
      check_token_ids(f"examples[{i}] targets", _tokens("targets", b), vocab_size)
    )
    if not len(ins[-1]) or not len(outs[-1]):
      raise ValueError(f"examples[{i}] has an empty input or target")
  E = int(enc_len) if enc_len is not None else train.bucket_length(max(map(len, ins)))
  T = int(dec_len) if dec_len is not None else train.bucket_length(max(map(len, outs)))
  for name, seqs, n in (("enc_len", ins, E), ("dec_len", outs, T)):
    if max(map(len, seqs)) > n:
      raise ValueError(f"{name}={n} is shorter than an example ({max(map(len, seqs))})")
  B = len(examples)
  out = {
    "enc_tokens": np.full((B, E), pad_id, np.int32),
    "enc_lengths": np.array([len(a) for a in ins], np.int32),
    "dec_inputs": np.full((B, T), pad_id, np.int32),
    "targets": np.full((B, T), pad_id, np.int32),
    "loss_mask": np.zeros((B, T), np.float32),
  }
  for b, (a, t) in enumerate(zip(ins, outs)):
    out["enc_tokens"][b, : len(a)] = a
    out["targets"][b, : len(t)] = t
    out["dec_inputs"][b, : len(t)] = np.concatenate([[start_id], t[:-1]])
    out["loss_mask"][b, : len(t)] = 1.0
  return out


# ----------------------------------------------------------------------------------
# Losses: PrefixLM cross-entropy and knowledge distillation
# ----------------------------------------------------------------------------------


def kd_terms(student_logits_BxTxV, teacher_logits_BxTxV, weights_BxT, temperature=1.0):
  """Summed distillation loss: sum over positions of weights * temperature^2 *
  KL(softmax(teacher / temperature) || softmax(student / temperature)), in nats
  (float32). The temperature^2 keeps gradient scales comparable across
  temperatures (Hinton et al. 2015, "Distilling the Knowledge in a Neural
  Network", arXiv:1503.02531). KL = soft-label cross-entropy minus the
  teacher's entropy, so both have the same gradient.
  """
  t = jnp.asarray(temperature, jnp.float32)
  s_lp = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32) / t, -1)
  t_lp = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32) / t, -1)
  kl = jnp.sum(jnp.exp(t_lp) * (t_lp - s_lp), -1)
  return (kl * weights_BxT).sum() * t * t


def _check_kd(kd_weight, kd_temperature) -> None:
  if not _is_real(kd_weight) or not 0.0 <= kd_weight <= 1.0:
    raise ValueError(f"kd_weight must be a number in [0, 1], got {kd_weight!r}")
  if not _is_real(kd_temperature) or not kd_temperature > 0:
    raise ValueError(f"kd_temperature must be a number > 0, got {kd_temperature!r}")


def prefix_lm_loss_terms(
  params: EncDecParams,
  cfg: EncDecConfig,
  batch: dict,
  kd_weight: float = 0.0,
  kd_temperature: float = 1.0,
):
  """Summed PrefixLM loss on the decoder targets, with optional KD.

  loss per target = (1 - kd_weight) * NLL + kd_weight * KD (`kd_terms`),
  where KD compares the encoder-decoder's next-token distribution with the
  decoder-only teacher's at the same target (batch["teacher_logits"], from
  `make_teacher_fn`).

  Args:
    batch: `encdec_batch` arrays (+ "teacher_logits" float [B, T, V] when
      kd_weight > 0).

  Returns:
    (loss_sum, n_targets, aux {"correct", "nll", "kd"} sums), the
    `jaxllm.train` loss convention (the train step divides by n_targets).

  Raises:
    ValueError: naming kd_weight / kd_temperature out of range, or a missing
      "teacher_logits" when kd_weight > 0.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225), PrefixLM + KD.
  """
  _check_kd(kd_weight, kd_temperature)
  logits, _ = encdec.forward(
    params,
    batch["enc_tokens"],
    batch["dec_inputs"],
    cfg,
    enc_lengths_B=batch["enc_lengths"],
  )
  w = batch["loss_mask"].astype(jnp.float32)
  nll, correct = train.nll_terms(logits, batch["targets"], w)
  kd = jnp.float32(0.0)
  if kd_weight > 0:
    if "teacher_logits" not in batch:
      raise ValueError("kd_weight > 0 needs batch['teacher_logits'] (make_teacher_fn)")
    kd = kd_terms(logits, batch["teacher_logits"], w, kd_temperature)
  loss = (1.0 - kd_weight) * nll + kd_weight * kd
  return loss, w.sum(), {"correct": correct, "nll": nll, "kd": kd}


def make_prefix_lm_loss_fn(
  cfg: EncDecConfig, kd_weight: float = 0.0, kd_temperature: float = 1.0
):
  """`loss_fn(params, batch, key)` of `prefix_lm_loss_terms` for
  `jaxllm.train.make_train_step`.

  Raises:
    ValueError: naming kd_weight / kd_temperature out of range.
  """
  _check_kd(kd_weight, kd_temperature)

  def loss_fn(params, batch, key):
    del key
    return prefix_lm_loss_terms(params, cfg, batch, kd_weight, kd_temperature)

  return loss_fn


def teacher_sequences(batch: dict, pad_id: int = 0, mode_ids=()):
  """The decoder-only teacher's view of a PrefixLM batch: per row the encoder
  input (without a leading mode token in `mode_ids`) followed by the targets,
  as one causal sequence, and where its logits predict each target.

  Returns:
    (tokens int32 [B, S], index int32 [B, T]): logits at tokens position
    index[b, j] predict target j of row b (index = input length - 1 + j; 0 on
    padding).
  """
  enc, lens = np.asarray(batch["enc_tokens"]), np.asarray(batch["enc_lengths"])
  tgt, mask = np.asarray(batch["targets"]), np.asarray(batch["loss_mask"]) > 0
  seqs = []
  for b in range(enc.shape[0]):
    x = enc[b, : lens[b]]
    if len(x) and int(x[0]) in {int(m) for m in mode_ids}:
      x = x[1:]
    seqs.append((x, tgt[b, mask[b]]))
  S = train.bucket_length(max(len(x) + len(t) for x, t in seqs))
  tokens = np.full((len(seqs), S), pad_id, np.int32)
  index = np.zeros(tgt.shape, np.int32)
  for b, (x, t) in enumerate(seqs):
    tokens[b, : len(x) + len(t)] = np.concatenate([x, t])
    index[b, : len(t)] = len(x) - 1 + np.arange(len(t))
  return tokens, index


def make_teacher_fn(teacher_cfg: ModelConfig):
  """A jitted `fn(params, tokens_BxS, index_BxT) -> logits float32 [B, T, V]`:
  the decoder-only teacher's next-token logits at the target positions
  (`teacher_sequences`).

  Raises:
    ValueError: if teacher_cfg is not a ModelConfig.
  """
  if not isinstance(teacher_cfg, ModelConfig):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      f"teacher_cfg must be a ModelConfig, got {type(teacher_cfg).__name__}"
    )

  @jax.jit
  def fn(params, tokens_BxS, index_BxT):
    logits, _, _ = decoder_only_forward(params, tokens_BxS, teacher_cfg)
    return jnp.take_along_axis(logits.astype(jnp.float32), index_BxT[..., None], 1)

  return fn


# ----------------------------------------------------------------------------------
# Initialisation from decoder-only checkpoints
# ----------------------------------------------------------------------------------


def _fresh(tree):
  """A copy of every array (encoder and decoder must not share buffers: a train
  step donates its parameters)."""
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def balanced_init(cfg: ModelConfig, params, decoder_start_id: int):
  """Balanced adaptation: encoder and decoder both from one decoder-only
  checkpoint, cross-attention from each decoder layer's self-attention.

  Right after it, with cross-attention's output projections zeroed, the decoder
  computes exactly the parent's forward pass on [start] + target (tested), and
  every encoder layer is the parent's layer with bidirectional attention.

  Args:
    cfg / params: the parent's ModelConfig and Params.
    decoder_start_id: the decoder's first token (for a parent trained on BOS +
      text, its BOS id keeps the decoder on the parent's distribution).

  Returns:
    (EncDecConfig, EncDecParams), arrays copied (none shared with `params`).

  Raises:
    ValueError: from EncDecConfig / encdec_from_decoders, naming the field.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225), section 3.
  """
  ecfg = EncDecConfig(encoder=cfg, decoder=cfg, decoder_start_id=decoder_start_id)
  p = encdec.encdec_from_decoders(ecfg, params, params, "self_attention")
  return ecfg, _fresh(p)


def unbalanced_init(
  enc_cfg: ModelConfig,
  enc_params,
  dec_cfg: ModelConfig,
  dec_params,
  key: jax.Array,
  decoder_start_id: int,
  cross_n_kv_heads: int | None = None,
):
  """Unbalanced adaptation: the encoder from one decoder-only checkpoint (the
  bigger), the decoder from another; cross-attention random (its keys / values
  project the encoder's width to the decoder's heads). Train with a
  cross-attention-only warm-up first (`cross_only`).

  Returns:
    (EncDecConfig, EncDecParams), arrays copied.

  Raises:
    ValueError: naming the field: vocabularies that differ, cross_n_kv_heads
      that does not divide the decoder's heads (EncDecConfig), parameters
      that do not match their configs.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225), 9B-2B.
  """
  ecfg = EncDecConfig(
    encoder=enc_cfg,
    decoder=dec_cfg,
    cross_n_kv_heads=cross_n_kv_heads,
    decoder_start_id=decoder_start_id,
  )
  p = encdec.encdec_from_decoders(ecfg, enc_params, dec_params, "random", key)
  return ecfg, _fresh(p)


def extend_vocab(cfg: ModelConfig, params, n_new: int, key: jax.Array):
  """Append `n_new` ids at the top of a decoder-only model's vocabulary (for
  UL2's sentinel and mode tokens, `reserved_ids`).

  New embedding rows (and new LM-head columns when untied) are drawn N(0,
  sigma^2) with sigma the standard deviation of the existing table, so the new
  tokens look like ordinary ones; the old ids keep their rows (their logits do
  not change, but the softmax now also spreads mass over the new ids).

  Returns:
    (cfg with vocab_size V + n_new, Params with embed [V + n_new, D]).

  Raises:
    ValueError: naming `n_new` when it is not an int >= 1.
  """
  if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
    raise ValueError(f"n_new must be an int >= 1, got {n_new!r}")
  k1, k2 = jax.random.split(key)

  def grow(x, k, axis):
    shape = list(x.shape)
    shape[axis] = n_new
    new = jax.random.normal(k, shape, jnp.float32) * jnp.std(x.astype(jnp.float32))
    return jnp.concatenate([x, new.astype(x.dtype)], axis)

  embed = grow(params.embed, k1, 0)
  head = None if params.lm_head is None else grow(params.lm_head, k2, 1)
  new_cfg = cfg.replace(vocab_size=cfg.vocab_size + n_new)
  return new_cfg, dataclasses.replace(params, embed=embed, lm_head=head)


# ----------------------------------------------------------------------------------
# Cross-attention warm-up
# ----------------------------------------------------------------------------------

CROSS, FROZEN = "cross", "frozen"


def cross_labels(params: EncDecParams) -> EncDecParams:
  """The same tree with "cross" at every cross-attention leaf and "frozen"
  elsewhere (the labels of `cross_only`).

  Raises:
    ValueError: if params is not EncDecParams.
  """
  if not isinstance(params, EncDecParams):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      f"params must be EncDecParams, got {type(params).__name__}"
    )
  label = lambda name: functools.partial(jax.tree_util.tree_map, lambda _: name)
  return EncDecParams(
    encoder=label(FROZEN)(params.encoder),
    decoder=label(FROZEN)(params.decoder),
    cross=label(CROSS)(params.cross),
  )


def cross_only(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` on cross-attention parameters only; every other update is
  exactly zero (optax.set_to_zero), so encoder and decoder weights stay
  bit-identical through the warm-up (tested), weight decay included.

  Source: T5Gemma (arXiv:2504.06225): the unbalanced model's warm-up.
  """
  return optax.multi_transform(
    {CROSS: optimizer, FROZEN: optax.set_to_zero()}, cross_labels
  )
