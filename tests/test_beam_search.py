"""PRM beam search and DVTS against a brute-force Python replay of every round.

The toy: a bigram model and a prefix-hash potential as the step scorer, so the
score of any text is known in closed form. From the recorded trace (candidate
steps, the row each candidate extended, scores, kept indices) a Python
reference rebuilds every candidate's full text and checks: each score is the
scorer applied to that text (after the greedy look-ahead, replayed in Python),
the kept candidates are the top-`keep` of their group, every next-round row
extends the right kept candidate (so DVTS subtrees never mix), and the pool
holds the best finished candidates.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_models import one_layer_config

from algorithms.beam_search import BeamConfig, run_beam_search, run_dvts
from algorithms.scorers import ConfidenceScorer
from jaxllm import BigramLM, Transformer, forward, init_params
from jaxllm.cache import take_rows

V, EOS, DELIM, S, R = 5, 2, 3, 2, 4
MOD, BASE = 4099, V + 1


@dataclasses.dataclass(frozen=True)
class PrefixHashScorer:
  """score = table[hash(prefix) mod 4099]; state = running hash."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, table, h_B, step, active_B):
    for s in range(step.tokens.shape[1]):
      go = active_B & (s < step.length)
      h_B = jnp.where(go, (h_B * BASE + step.tokens[:, s] + 1) % MOD, h_B)
    return h_B, table[h_B]

  def reorder(self, h_B, index_N):
    return take_rows(h_B, index_N)


def _hash(text):
  h = 0
  for tok in text:
    h = (h * BASE + tok + 1) % MOD
  return h


def _greedy_step(table, last):
  out = []
  for _ in range(S):
    last = int(np.argmax(table[last]))
    out.append(last)
    if last in (EOS, DELIM):
      break
  return out


def _check_against_replay(cfg, result, comp, table, pot, prompts):
  tr = jax.tree_util.tree_map(np.asarray, result.trace)
  table, pot = np.asarray(table), np.asarray(pot)
  P, N, G, K, M = len(prompts), cfg.n_paths, cfg.group_size, cfg.keep, cfg.beam_width
  NG = P * N // G
  rounds = int(result.rounds)
  assert 1 <= rounds <= R
  texts = {}  # (round, row) -> generated text of that candidate
  pool_ref = [[] for _ in range(NG)]
  gen_tokens = 0
  for t in range(rounds):
    for b in range(P * N):
      if not tr["cand_active"][t, b]:
        continue
      src = tr["source"][t, b]
      prefix = [] if t == 0 else texts[(t - 1, src)]
      if t == 0:
        assert src == -1
      step = list(tr["cand_tokens"][t, b, : tr["cand_lengths"][t, b]])
      assert 1 <= len(step) <= S
      assert all(x not in (EOS, DELIM) for x in step[:-1])
      assert tr["cand_stop"][t, b] == (step[-1] == EOS)
      text = prefix + step
      texts[(t, b)] = text
      gen_tokens += len(step)
      full = text
      if cfg.lookahead and step[-1] != EOS:
        last = text[-1]
        for _ in range(cfg.lookahead):
          la = _greedy_step(table, last)
          full, last = full + la, la[-1]
          gen_tokens += len(la)
          if la[-1] == EOS:
            break
      np.testing.assert_allclose(tr["cand_scores"][t, b], pot[_hash(full)], rtol=1e-6)
    for g in range(NG):
      rows = np.arange(g * G, (g + 1) * G)
      act = rows[tr["cand_active"][t, rows]]
      scores = np.sort(tr["cand_scores"][t, act])[::-1]
      kept = g * G + tr["kept"][t, g]
      kept_act = kept[tr["cand_active"][t, kept]]
      assert len(kept_act) == min(K, len(act))
      np.testing.assert_array_equal(
        np.sort(tr["cand_scores"][t, kept_act])[::-1], scores[: len(kept_act)]
      )
      for kr in kept_act:
        done = tr["cand_stop"][t, kr] or t + 1 == R
        if done:
          pool_ref[g].append((float(tr["cand_scores"][t, kr]), texts[(t, kr)]))
      if t + 1 < rounds:
        for j, row in enumerate(rows):
          parent = kept[j // M]
          go = tr["cand_active"][t, parent] and not tr["cand_stop"][t, parent]
          assert tr["cand_active"][t + 1, row] == go
          if go:
            assert tr["source"][t + 1, row] == parent  # same group: never mixes
  # The loop ran until no group had a live row.
  if rounds < R:
    assert not any(
      tr["cand_active"][rounds - 1, kr] and not tr["cand_stop"][rounds - 1, kr]
      for g in range(NG)
      for kr in g * G + tr["kept"][rounds - 1, g]
    )
  # Pool = the best G kept-finished candidates of every group.
  scores = np.asarray(result.scores).reshape(NG, G)
  toks, lens = (
    np.asarray(result.tokens).reshape(NG, G, -1),
    np.asarray(result.lengths).reshape(NG, G),
  )
  for g in range(NG):
    want = sorted(pool_ref[g], key=lambda x: -x[0])[:G]
    got = [
      (float(scores[g, i]), list(toks[g, i, : lens[g, i]]))
      for i in range(G)
      if np.isfinite(scores[g, i])
    ]
    assert sorted(got) == sorted(want)
  best = np.asarray(result.best)
  s = np.asarray(result.scores)
  np.testing.assert_array_equal(s[np.arange(P), best], s.max(1))
  assert comp.generated_tokens == gen_tokens
  assert comp.verifier_tokens == 0 and comp.flops == 0.0  # toy model, free scorer


def _toy(seed):
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(V, V)) * 1.5, jnp.float32)
  pot = jnp.asarray(rng.uniform(0.01, 1.0, size=MOD), jnp.float32)
  return table, pot


@pytest.mark.parametrize("method,lookahead", [("beam", 1), ("dvts", 0)])
def test_against_python_replay(method, lookahead):
  table, pot = _toy(0)
  cfg = BeamConfig(
    method=method,
    n_paths=8,
    beam_width=2,
    max_steps=R,
    max_step_tokens=S,
    delimiter_ids=(DELIM,),
    stop_ids=(EOS,),
    lookahead=lookahead,
    return_trace=True,
  )
  prompts = [[0], [1, 4], [4]]
  run = run_beam_search if method == "beam" else run_dvts
  for seed in range(3):  # same compiled program, different samples
    result, comp = run(
      BigramLM(V), table, PrefixHashScorer(), pot, prompts, jax.random.key(seed), cfg
    )
    _check_against_replay(
      cfg if method == "beam" else dataclasses.replace(cfg, method="dvts"),
      result,
      comp,
      table,
      pot,
      prompts,
    )


def test_bad_config_raises():
  with pytest.raises(ValueError, match="multiple"):
    BeamConfig(n_paths=6, beam_width=4, stop_ids=(1,))
  with pytest.raises(ValueError, match="method"):
    BeamConfig(method="bfs", stop_ids=(1,))
  with pytest.raises(ValueError, match="lookahead"):
    BeamConfig(lookahead=-1, stop_ids=(1,))
  with pytest.raises(ValueError, match="stop_ids"):
    BeamConfig()


@pytest.mark.slow
def test_transformer_beam_scores_match_uncached_forward():
  """With a random transformer and the confidence scorer, every pool entry's
  score is exp(mean log-prob) of its last step under an uncached forward."""
  cfg = one_layer_config()
  params = init_params(cfg, jax.random.key(0))
  bc = BeamConfig(
    n_paths=6,
    beam_width=3,
    max_steps=3,
    max_step_tokens=3,
    delimiter_ids=(10,),
    stop_ids=(0,),
  )
  prompts = [[1, 4, 5], [2, 3]]
  r, comp = run_beam_search(
    Transformer(cfg), params, ConfidenceScorer(), None, prompts, jax.random.key(1), bc
  )
  fwd = jax.jit(lambda p, x: forward(p, x, cfg))  # one shape: compiled once
  st, sl = np.asarray(r.step_tokens), np.asarray(r.step_lengths)
  scores = np.asarray(r.scores)
  checked = 0
  for p in range(2):
    for i in range(6):
      if not np.isfinite(scores[p, i]):
        continue
      n_steps = int((sl[p, i] > 0).sum())
      gen = [int(x) for k in range(n_steps) for x in st[p, i, k, : sl[p, i, k]]]
      text = prompts[p] + gen
      lg, _, _ = fwd(params, jnp.array([text + [0] * (16 - len(text))]))
      lp = np.asarray(jax.nn.log_softmax(lg[0], -1))
      last_len = int(sl[p, i, n_steps - 1])
      start = len(text) - last_len
      want = np.exp(np.mean([lp[j - 1, text[j]] for j in range(start, len(text))]))
      np.testing.assert_allclose(scores[p, i], want, rtol=1e-4)
      checked += 1
  assert checked >= 2 and comp.decode_flops > 0
