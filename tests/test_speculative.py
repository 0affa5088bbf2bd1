"""End-to-end tests of speculative decoding through the real driver (algorithms/speculative.py).

Contract: the emitted text is distributed exactly as sampling from the target with the
same sampling settings. References are independent of the driver: a bigram target's
sequence probabilities by enumeration; a tiny Transformer target's first-2-token
distribution by enumerating plain causal forward passes (no cache, no tree) over all
V continuations; plain greedy `generate`; a fresh prefill of the emitted text.
Compiled programs are shared through module-level caches (XLA compile time dominates).
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_models import three_layer_config
from scipy import stats

from algorithms.drafts import init_sub_vocab_draft
from algorithms.speculative import (
  METHODS,
  LayerSkipDraft,
  SpecConfig,
  chain_block_efficiency,
  chain_speedup,
  speculative_generate,
)
from jaxllm import flops as flops_lib
from jaxllm.decoding import BigramLM, Transformer
from jaxllm.generate import generate
from jaxllm.model import forward
from jaxllm.params import init_params
from jaxllm.sampling import make_sampling

ALPHA = 1e-5  # chi-square false-alarm rate (seeds are fixed: results are deterministic)

TREE_KW = {
  "autoregressive": {},
  "chain": dict(gamma=3),
  "iid": dict(num_drafts=3, depth=2),
  "rsd_c": dict(branching=(3, 2)),
  "rsd_s": dict(beam_width=3, depth=3),
}


def _np_filtered_probs(logits, temperature=1.0, top_k=None):
  """Reference sampling distribution in numpy: temperature, then top-k, softmax."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k is not None and top_k < x.shape[-1]:
    kth = np.sort(x, axis=-1)[..., -top_k][..., None]
    x = np.where(x >= kth, x, -np.inf)
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _chisquare(counts, probs, n):
  """Chi-square p-value of counts against probs; cells with tiny expectation merged,
  and a cell with zero probability must be empty."""
  counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
  assert counts[probs == 0].sum() == 0, "emitted a sequence of target probability 0"
  exp = probs * n
  big = exp >= 5
  obs = np.append(counts[big], counts[~big].sum())
  ex = np.append(exp[big], exp[~big].sum())
  if ex[-1] == 0:
    obs, ex = obs[:-1], ex[:-1]
  return stats.chisquare(obs, ex * obs.sum() / ex.sum()).pvalue


# ---------------------------------------------------------------------------------
# Bigram target and draft (fast, exact distribution known in closed form)
# ---------------------------------------------------------------------------------

V_BI, K_BI, START = 4, 3, 2
N_BI = 30_000


def _bigram_tables():
  rng = np.random.default_rng(7)
  target = rng.normal(size=(V_BI, V_BI)) * 1.5
  # A draft that differs strongly from the target, with one token it never proposes
  # after token 0 (draft probability 0 where the target has mass).
  draft = -0.7 * target + rng.normal(size=(V_BI, V_BI))
  draft[0, 3] = -np.inf
  return jnp.asarray(target, jnp.float32), jnp.asarray(draft, jnp.float32)


def _bigram_exact(table, temperature, top_k):
  P = _np_filtered_probs(np.asarray(table), temperature, top_k)
  probs = np.zeros(V_BI**K_BI)
  for i, seq in enumerate(itertools.product(range(V_BI), repeat=K_BI)):
    prev, p = START, 1.0
    for x in seq:
      p *= P[prev, x]
      prev = x
    probs[i] = p
  return probs


SLOW = pytest.mark.slow
# Temperature is not static (same compiled program); top-k is (a new program).
BIGRAM_CASES = (
  [(m, 1.0, None) for m in METHODS]
  + [(m, 0.6, None) for m in ("chain", "rsd_s")]
  + [pytest.param(m, 0.7, 3, marks=SLOW) for m in METHODS]
)


@pytest.mark.parametrize("method,temperature,top_k", BIGRAM_CASES)
def test_bigram_first_tokens_follow_target(method, temperature, top_k):
  target, draft = _bigram_tables()
  m = BigramLM(V_BI)
  cfg = SpecConfig(
    method=method,
    max_new_tokens=K_BI,
    sampling_temperature=temperature,
    sampling_top_k=top_k,
    **TREE_KW[method],
  )
  out, comp = speculative_generate(
    m, target, m, draft, [[1, START]] * N_BI, jax.random.key(11), cfg
  )
  toks = np.asarray(out.tokens)
  assert toks.shape == (N_BI, K_BI) and toks.min() >= 0 and toks.max() < V_BI
  idx = np.ravel_multi_index(toks.T, (V_BI,) * K_BI)
  counts = np.bincount(idx, minlength=V_BI**K_BI)
  pval = _chisquare(counts, _bigram_exact(target, temperature, top_k), N_BI)
  assert pval > ALPHA, f"{method}: p-value {pval:.2e}"
  calls = np.asarray(out.target_calls)
  assert (np.asarray(out.num_emitted) >= K_BI).all() and (calls >= 1).all()
  if method == "autoregressive":
    assert (calls == K_BI).all()
  else:
    # Every block emits accepted drafts + 1 and at most depth + 1 tokens.
    D = cfg.draft_calls_per_block
    assert (np.asarray(out.num_emitted) == np.asarray(out.accepted) + calls).all()
    assert (np.asarray(out.num_emitted) <= calls * (D + 1)).all()
    assert (np.asarray(out.draft_calls) == calls * D).all()
  assert comp.generated_tokens == N_BI * K_BI and comp.flops == 0.0  # toy: no cfg


# ---------------------------------------------------------------------------------
# Tiny Transformer target with a layer-skipped draft (V = 8)
# ---------------------------------------------------------------------------------

V_TF = 8
PROMPT = [3, 1, 4, 1, 5]


@functools.lru_cache(maxsize=None)
def _tiny():
  cfg = three_layer_config(V_TF)
  params = init_params(cfg, jax.random.key(3))
  # Scale the final norm up (= the logits) so next-token distributions are far from
  # uniform (with the default init they are nearly uniform: a weak test).
  params = dataclasses.replace(params, final_norm=params.final_norm * 8.0)
  return cfg, params


def _exact_two_token_probs(cfg, params, prompt, temperature=1.0, top_k=None):
  """p(x1, x2 | prompt) for all V^2 pairs from plain causal forwards (no cache)."""
  seqs = np.array([prompt + [a, b] for a in range(V_TF) for b in range(V_TF)], np.int32)
  logits, _, _ = forward(params, jnp.asarray(seqs), cfg)
  logits = np.asarray(logits, np.float64)
  n = len(prompt)
  p1 = _np_filtered_probs(logits[:, n - 1], temperature, top_k)  # same for all rows
  p2 = _np_filtered_probs(logits[:, n], temperature, top_k)
  a = seqs[:, n]
  b = seqs[:, n + 1]
  return p1[np.arange(len(seqs)), a] * p2[np.arange(len(seqs)), b]


TF_EXACT_KW = {
  "rsd_s": dict(beam_width=2, depth=2),
  "iid": dict(num_drafts=2, depth=2),
  "rsd_c": dict(branching=(2, 2)),
  "chain": dict(gamma=2),
}


@pytest.mark.parametrize(
  "method", ["rsd_s"] + [pytest.param(m, marks=SLOW) for m in ("iid", "rsd_c", "chain")]
)
def test_transformer_layer_skip_draft_is_exact(method):
  cfg, params = _tiny()
  target, draft = Transformer(cfg), LayerSkipDraft(cfg, (0,))
  n = 8_000
  sc = SpecConfig(
    method=method, max_new_tokens=2, sampling_top_k=6, **TF_EXACT_KW[method]
  )
  out, comp = speculative_generate(
    target, params, draft, params, [PROMPT] * n, jax.random.key(5), sc
  )
  toks = np.asarray(out.tokens)
  counts = np.bincount(toks[:, 0] * V_TF + toks[:, 1], minlength=V_TF**2)
  exact = _exact_two_token_probs(cfg, params, PROMPT, top_k=6)
  pval = _chisquare(counts, exact, n)
  assert pval > ALPHA, f"p-value {pval:.2e}"
  # The layer-skipped draft is useful: some drafts get accepted.
  assert np.asarray(out.accepted).mean() > 0.2
  assert comp.decode_flops > 0 and comp.prefill_flops > 0


@pytest.mark.parametrize(
  "method", ["chain"] + [pytest.param(m, marks=SLOW) for m in ("rsd_s", "rsd_c")]
)
def test_transformer_sub_vocab_draft_is_exact(method):
  """A draft that never proposes 3 of the 8 tokens (q = 0 where the target has mass:
  the target's residual must supply them) still yields the target's distribution."""
  cfg, params = _tiny()
  draft, dparams = init_sub_vocab_draft(cfg, params, [0, 2, 3, 5, 7], 1)
  n = 8_000
  sc = SpecConfig(
    method=method, max_new_tokens=2, sampling_top_k=6, **TF_EXACT_KW[method]
  )
  out, _ = speculative_generate(
    Transformer(cfg), params, draft, dparams, [PROMPT] * n, jax.random.key(6), sc
  )
  toks = np.asarray(out.tokens)
  counts = np.bincount(toks[:, 0] * V_TF + toks[:, 1], minlength=V_TF**2)
  exact = _exact_two_token_probs(cfg, params, PROMPT, top_k=6)
  assert exact.reshape(V_TF, V_TF)[[1, 4, 6]].sum() > 0.05  # the missed tokens matter
  pval = _chisquare(counts, exact, n)
  assert pval > ALPHA, f"p-value {pval:.2e}"
  assert np.asarray(out.accepted).mean() > 0.1


@functools.lru_cache(maxsize=None)
def _greedy_runs(method):
  cfg, params = _tiny()
  target, draft = Transformer(cfg), LayerSkipDraft(cfg, (0,))
  prompts = [PROMPT, [2, 7], [6, 0, 6]]
  sc = SpecConfig(
    method=method, max_new_tokens=10, sampling_temperature=0.0, **TF_EXACT_KW[method]
  )
  out, _ = speculative_generate(
    target, params, draft, params, prompts, jax.random.key(0), sc
  )
  ref = generate(target, params, prompts, jax.random.key(1), 10, make_sampling(0.0))
  return cfg, params, prompts, out, np.asarray(ref.tokens)


GREEDY_METHODS = ["rsd_s"] + [
  pytest.param(m, marks=SLOW) for m in ("chain", "iid", "rsd_c")
]


@pytest.mark.parametrize("method", GREEDY_METHODS)
def test_greedy_equals_plain_greedy_generate(method):
  _, _, _, out, ref = _greedy_runs(method)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


@pytest.mark.parametrize("method", GREEDY_METHODS)
def test_kv_cache_after_commits_equals_fresh_prefill(method):
  cfg, params, prompts, out, _ = _greedy_runs(method)
  target = Transformer(cfg)
  n_emit = np.asarray(out.num_emitted)
  toks_all = np.asarray(out.tokens_all)
  # The target state holds prompt + emitted[:-1]; the last emitted token is pending.
  np.testing.assert_array_equal(
    np.asarray(out.last), toks_all[np.arange(3), n_emit - 1]
  )
  lens = np.asarray(out.target_state.lengths)
  np.testing.assert_array_equal(lens, [len(p) + e - 1 for p, e in zip(prompts, n_emit)])
  _, logits = jax.jit(target.extend)(params, out.target_state, out.last[:, None])
  texts = [p + list(toks_all[b, : n_emit[b]]) for b, p in enumerate(prompts)]
  T = max(map(len, texts))
  padded = np.array([t + [0] * (T - len(t)) for t in texts], np.int32)
  _, ref = jax.jit(target.prefill, static_argnums=3)(
    params, jnp.asarray(padded), jnp.asarray([len(t) for t in texts]), T
  )
  np.testing.assert_allclose(
    np.asarray(logits[:, 0]), np.asarray(ref), rtol=1e-4, atol=1e-4
  )


def test_compute_accounting_closed_form():
  """Autoregressive: token i of N attends to prompt + i keys; trees: M tokens/call."""
  cfg, params = _tiny()
  t = Transformer(cfg)
  N, n = 6, len(PROMPT)
  out, comp = speculative_generate(
    t,
    params,
    None,
    None,
    [PROMPT],
    jax.random.key(0),
    SpecConfig(method="autoregressive", max_new_tokens=N),
  )
  want = sum(float(flops_lib.decode_flops(cfg, n + i)) for i in range(N))
  np.testing.assert_allclose(comp.decode_flops, want, rtol=1e-9)
  np.testing.assert_allclose(
    comp.prefill_flops,
    sum(float(flops_lib.decode_flops(cfg, i)) for i in range(1, n)),
    rtol=1e-9,
  )
  assert comp.model_calls == N and int(out.target_calls[0]) == N
  # Tree methods: every target call scores the whole tree.
  _, _, _, tree_out, _ = _greedy_runs("rsd_s")
  M = 1 + 2 * 2
  np.testing.assert_array_equal(
    np.asarray(tree_out.counts["t_tok"]), np.asarray(tree_out.target_calls) * M
  )


# ---------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------


def test_bad_input_raises():
  cfg, params = _tiny()
  t = Transformer(cfg)
  with pytest.raises(ValueError, match="method"):
    SpecConfig(method="nope")
  with pytest.raises(ValueError, match="vocabulary"):
    speculative_generate(
      t, params, BigramLM(5), None, [[1]], jax.random.key(0), SpecConfig()
    )
  with pytest.raises(ValueError, match="without replacement"):
    speculative_generate(
      t,
      params,
      t,
      params,
      [[1]],
      jax.random.key(0),
      SpecConfig(method="rsd_s", beam_width=9),
    )
  with pytest.raises(ValueError, match="layers"):
    LayerSkipDraft(cfg, (2, 1))
  with pytest.raises(ValueError, match="needs a draft"):
    speculative_generate(t, params, None, None, [[1]], jax.random.key(0), SpecConfig())
  with pytest.raises(ValueError, match="max_seq_len"):
    speculative_generate(
      t, params, t, params, [[1]], jax.random.key(0), SpecConfig(max_new_tokens=80)
    )


def test_flops_of_a_model_without_config_are_an_error_not_zero():
  """FLOPs follow jaxllm.flops.flops_config: a model with no ModelConfig that
  does not declare `flops_free = True` is refused before any model call (its
  FLOPs are never a silent 0); BigramLM declares itself free (0 FLOPs)."""
  calls = []

  class NoCfg(BigramLM):  # a BigramLM that does not declare itself free
    flops_free = False

    def prefill(self, *a, **kw):
      calls.append("prefill")
      return super().prefill(*a, **kw)

  table = jnp.zeros((V_BI, V_BI))
  free = BigramLM(V_BI)
  with pytest.raises(ValueError, match=r"target NoCfg has no `cfg`"):
    speculative_generate(
      NoCfg(V_BI),
      table,
      None,
      None,
      [[1]],
      jax.random.key(0),
      SpecConfig(method="autoregressive", max_new_tokens=2),
    )
  with pytest.raises(ValueError, match=r"draft NoCfg has no `cfg`"):
    speculative_generate(
      free,
      table,
      NoCfg(V_BI),
      table,
      [[1]],
      jax.random.key(0),
      SpecConfig(method="chain", gamma=2, max_new_tokens=2),
    )
  assert calls == []  # refused on the host, before the run
  out, comp = speculative_generate(
    free,
    table,
    None,
    None,
    [[1, 2]],
    jax.random.key(0),
    SpecConfig(method="autoregressive", max_new_tokens=2),
  )
  assert comp.flops == 0 and comp.prefill_flops == 0 and comp.decode_flops == 0
  assert comp.generated_tokens == 2 and comp.prefill_tokens == 1
  assert int(out.target_calls[0]) == 2


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("gamma", [1, 2, 5])
def test_chain_block_efficiency_matches_enumeration(alpha, gamma):
  """Tokens per target call of a chain with i.i.d. acceptance alpha, by
  enumerating the accept / reject pattern of the gamma draft tokens: the block
  emits the accepted prefix plus one target token."""
  expected = 0.0
  for pattern in itertools.product((True, False), repeat=gamma):
    p = np.prod([alpha if a else 1 - alpha for a in pattern])
    n_acc = next((i for i, a in enumerate(pattern) if not a), gamma)
    expected += p * (n_acc + 1)
  assert chain_block_efficiency(alpha, gamma) == pytest.approx(expected)
  assert chain_speedup(alpha, gamma, 0.25) == pytest.approx(expected / (gamma / 4 + 1))


def test_chain_closed_forms_refuse_bad_arguments():
  with pytest.raises(ValueError, match="alpha"):
    chain_block_efficiency(1.2, 2)
  with pytest.raises(ValueError, match="gamma"):
    chain_block_efficiency(0.5, 0)
  with pytest.raises(ValueError, match="cost_ratio"):
    chain_speedup(0.5, 2, -1.0)
  for bad in ("abc", "0.5", True, float("nan")):
    with pytest.raises(ValueError, match="alpha"):
      chain_block_efficiency(bad, 2)
  with pytest.raises(ValueError, match="must broadcast"):
    chain_speedup([0.5, 0.6], 2, [0.1, 0.2, 0.3])
  # Closed form: no work proportional to gamma.
  assert chain_block_efficiency(0.5, 10**9) == pytest.approx(2.0)
