"""One-step sampling: exact step distribution (toy model) and cache
consistency (transformer)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms.scorers import ConfidenceScorer
from algorithms.stepping import BUDGET, DELIMITER, STOP, sample_step
from jaxllm import BigramLM, ModelConfig, Transformer, forward, init_params
from jaxllm import flops as flops_lib
from jaxllm.sampling import make_sampling

V, DELIM, EOS, S = 4, 3, 2, 3


def exact_step_distribution(p_VxV, last):
  """P(step) for every possible step string (ends at DELIM/EOS or S tokens)."""
  out = {}
  for n in range(1, S + 1):
    for seq in itertools.product(range(V), repeat=n):
      ends = [t in (DELIM, EOS) for t in seq]
      if any(ends[:-1]) or (n < S and not ends[-1]):
        continue
      prob, prev = 1.0, last
      for t in seq:
        prob, prev = prob * p_VxV[prev, t], t
      out[seq] = prob
  return out


def test_step_distribution_matches_enumeration():
  table = jax.random.normal(jax.random.key(0), (V, V))
  p = np.asarray(jax.nn.softmax(table, -1), np.float64)
  model = BigramLM(V)
  n = 40000
  state, logits = model.prefill(table, jnp.full((n, 1), 1), jnp.ones((n,)), 0)
  run = jax.jit(
    lambda k: sample_step(
      model,
      table,
      state,
      logits,
      k,
      make_sampling(1.0),
      max_step_tokens=S,
      delimiter_ids=[DELIM],
      stop_ids=[EOS],
    )
  )
  state2, _, step = run(jax.random.key(1))
  exact = exact_step_distribution(p, 1)
  keys = list(exact)
  index = {k: i for i, k in enumerate(keys)}
  toks, lens = np.asarray(step.tokens), np.asarray(step.length)
  counts = np.zeros(len(keys))
  for row, L in zip(toks, lens):
    counts[index[tuple(row[:L])]] += 1
  exp = np.array([exact[k] for k in keys])
  exp = exp / exp.sum() * n
  assert stats.chisquare(counts, exp).pvalue > 1e-6
  # How each step ended, and the model state advanced by the step length.
  last_tok = toks[np.arange(n), lens - 1]
  ended = np.asarray(step.ended)
  np.testing.assert_array_equal(ended == STOP, last_tok == EOS)
  np.testing.assert_array_equal(ended == DELIMITER, last_tok == DELIM)
  assert ((ended == BUDGET) == (lens == S) & ~np.isin(last_tok, [DELIM, EOS])).all()
  np.testing.assert_array_equal(state2.lengths, 1 + lens)
  np.testing.assert_array_equal(state2.last, last_tok)


def test_transformer_step_keeps_cache_exact():
  cfg = ModelConfig(
    vocab_size=11, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64
  )
  params = init_params(cfg, jax.random.key(0))
  model = Transformer(cfg)
  prompts = jnp.array([[1, 4, 5, 0], [2, 3, 0, 0], [6, 7, 8, 9]])
  lengths = jnp.array([3, 2, 4])
  state, logits = model.prefill(params, prompts, lengths, 24)
  active = jnp.array([True, False, True])
  for i in range(2):  # two consecutive steps
    state, logits, step = sample_step(
      model,
      params,
      state,
      logits,
      jax.random.key(i),
      make_sampling(1.0),
      max_step_tokens=5,
      delimiter_ids=[10],
      stop_ids=[0],
      active_B=active,
    )
    assert int(step.length[1]) == 0
    prompts = [
      list(np.asarray(prompts[b, : lengths[b]]))
      + list(np.asarray(step.tokens[b, : step.length[b]]))
      for b in range(3)
    ]
    lengths = jnp.array([len(p) for p in prompts])
    np.testing.assert_array_equal(state.lengths, lengths)
    prompts = jnp.array([p + [0] * (16 - len(p)) for p in prompts])
  ref, _, _ = forward(params, prompts, cfg)
  ref_last = ref[jnp.arange(3), lengths - 1]
  np.testing.assert_allclose(logits, ref_last, atol=2e-5, rtol=2e-5)
  # Confidence score = exp(mean log-prob of the step tokens).
  _, conf = ConfidenceScorer().score(None, None, step, active)
  lp = np.asarray(step.logprob)
  L = np.asarray(step.length)
  want = np.exp(lp[0, : L[0]].mean())
  np.testing.assert_allclose(conf[0], want, rtol=1e-5)


def test_compute_record_refuses_models_without_a_config():
  """FLOPs are never silently 0: a model without a ModelConfig must declare
  itself free (BigramLM is; `flops_free = True`) or the caller opts out."""
  from algorithms import stepping

  counts = stepping.StepCounters.zeros(8)
  counts = counts.count_step(jnp.array([2, 3]), jnp.array([2, 1]), 3)

  class NoCfg:
    vocab_size = 4

  with pytest.raises(ValueError, match="model NoCfg has no `cfg`"):
    stepping.compute_record(NoCfg(), ConfidenceScorer(), [2, 3], counts)
  rec = stepping.compute_record(
    NoCfg(), ConfidenceScorer(), [2, 3], counts, count_flops=False
  )
  assert rec.flops == 0 and rec.generated_tokens == 3 and rec.prefill_tokens == 5

  class Free(NoCfg):
    flops_free = True

  assert stepping.compute_record(Free(), ConfidenceScorer(), [2, 3], counts).flops == 0
  assert (
    stepping.compute_record(BigramLM(4), ConfidenceScorer(), [2, 3], counts).flops == 0
  )

  @dataclasses.dataclass(frozen=True)
  class Wrapping:  # a scorer whose model has no config
    model: object

  with pytest.raises(ValueError, match="scorer model"):
    stepping.compute_record(BigramLM(4), Wrapping(NoCfg()), [2, 3], counts)
  # A wrapper reaches its inner model's config (e.g. GeneratorConfidence).
  cfg = ModelConfig(
    vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32
  )
  rec = stepping.compute_record(
    Transformer(cfg), Wrapping(Transformer(cfg)), [2, 3], counts
  )
  # Generated tokens: row 0 contexts 3, 4; row 1 context 4 (closed form).
  want = flops_lib.decode_flops(cfg, np.array([3, 4, 4])).sum()
  np.testing.assert_allclose(rec.decode_flops, want)
  np.testing.assert_allclose(
    rec.verifier_flops, want + flops_lib.prefill_flops(cfg, np.array([2, 3])).sum()
  )


def test_prefill_and_fork_prefills_each_prompt_once():
  from algorithms import stepping

  calls = []
  table = jax.random.normal(jax.random.key(0), (V, V))

  class Counting(BigramLM):
    def prefill(self, params, tokens, lengths, cache_size=0):
      calls.append(tokens.shape)
      return super().prefill(params, tokens, lengths, cache_size)

  rows = stepping.prefill_and_fork(
    Counting(V),
    table,
    ConfidenceScorer(),
    None,
    jnp.array([[1, 2], [3, 0]]),
    jnp.array([2, 1]),
    8,
    3,
  )
  assert calls == [(2, 2)]
  np.testing.assert_array_equal(rows.state.last, [2, 2, 2, 3, 3, 3])
  np.testing.assert_allclose(rows.logits_BxV, np.asarray(table)[[2, 2, 2, 3, 3, 3]])
