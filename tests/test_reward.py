"""Tests for jaxllm/reward.py (tiny sizes, independent references)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks import arith
from jaxllm import reward
from jaxllm.config import ModelConfig
from jaxllm.decoding import BigramLM

CFG = ModelConfig(
  vocab_size=13,
  d_model=16,
  n_layers=2,
  n_heads=2,
  n_kv_heads=1,
  d_ff=32,
  max_seq_len=64,
)


def _rm_params(seed=0):
  p = reward.init_reward_params(CFG, jax.random.PRNGKey(seed))
  # A head with a visible effect (the default init is deliberately tiny).
  return reward.RewardParams(lm=p.lm, head_w=p.head_w * 100.0, head_b=jnp.float32(0.3))


def test_prm_incremental_scores_equal_full_forward():
  model = reward.RewardModel(CFG)
  params = _rm_params()
  rng = np.random.default_rng(0)
  B, T = 3, 14
  seqs = rng.integers(1, CFG.vocab_size, (B, T)).astype(np.int32)
  full = np.asarray(jax.jit(model.score_all)(params, jnp.asarray(seqs)))

  lengths = np.array([3, 5, 2])  # ragged prompts
  prompt = np.zeros((B, 6), np.int32)
  for b in range(B):
    prompt[b, : lengths[b]] = seqs[b, : lengths[b]]
  state, s0 = jax.jit(model.prefill, static_argnums=3)(
    params, jnp.asarray(prompt), jnp.asarray(lengths), 24
  )
  np.testing.assert_allclose(
    np.asarray(s0), full[np.arange(B), lengths - 1], rtol=1e-5, atol=1e-6
  )
  extend = jax.jit(model.extend)
  pos = lengths.copy()
  for n_new in ([2, 4, 1], [3, 0, 4], [4, 3, 3]):  # ragged chunks of width 4
    n_new = np.array(n_new)
    chunk = np.zeros((B, 4), np.int32)
    valid = np.arange(4)[None, :] < n_new[:, None]
    for b in range(B):
      chunk[b, : n_new[b]] = seqs[b, pos[b] : pos[b] + n_new[b]]
    state, sc = extend(params, state, jnp.asarray(chunk), jnp.asarray(valid))
    sc = np.asarray(sc)
    for b in range(B):
      np.testing.assert_allclose(
        sc[b, : n_new[b]], full[b, pos[b] : pos[b] + n_new[b]], rtol=1e-5, atol=1e-6
      )
    pos += n_new
  np.testing.assert_array_equal(np.asarray(model.lengths(state)), pos)


def test_prm_reorder_forks_rows():
  model = reward.RewardModel(CFG)
  params = _rm_params(1)
  rng = np.random.default_rng(1)
  seqs = rng.integers(1, CFG.vocab_size, (2, 9)).astype(np.int32)
  state, _ = jax.jit(model.prefill, static_argnums=3)(
    params, jnp.asarray(seqs[:, :5]), jnp.array([5, 5]), 16
  )
  index = jnp.array([1, 0, 1])
  state = jax.jit(model.reorder)(state, index)
  tail = np.stack([seqs[1, 5:], seqs[0, 5:], seqs[1, 5:]])
  # Row 2 continues differently from row 0 after the fork.
  tail[2] = rng.integers(1, CFG.vocab_size, 4)
  _, sc = jax.jit(model.extend)(params, state, jnp.asarray(tail))
  ref_seqs = np.concatenate([seqs[np.asarray(index), :5], tail], axis=1)
  ref = np.asarray(jax.jit(model.score_all)(params, jnp.asarray(ref_seqs)))[:, 5:]
  np.testing.assert_allclose(np.asarray(sc), ref, rtol=1e-5, atol=1e-6)


def test_bce_matches_hand_computation():
  logits = jnp.array([[2.0, -1.0, 0.5, 30.0]])
  labels = jnp.array([[1.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 0, 1]])
  want = (
    math.log(1 + math.exp(-2.0))
    + math.log(1 + math.exp(-1.0))
    + math.log(1 + math.exp(30.0))
  ) / 3
  np.testing.assert_allclose(
    float(reward.bce_loss(logits, labels, mask)), want, rtol=1e-6
  )
  s, n = reward.bce_terms(logits, labels, mask)
  assert float(n) == 3.0


def test_reward_loss_fn_trains_a_separable_task():
  """The head + transformer learn 'is the token at the labelled position
  even?': BCE falls well below log 2."""
  from jaxllm import train

  rng = np.random.default_rng(0)
  tok = rng.integers(1, CFG.vocab_size, (16, 8)).astype(np.int32)
  batch = {
    "tokens": tok,
    "label_mask": np.ones_like(tok, np.float32),
    "labels": (tok % 2 == 0).astype(np.float32),
  }
  opt, _ = train.make_optimizer(3e-2, warmup_steps=1, total_steps=40)
  step = train.make_train_step(reward.reward_loss_fn(CFG), opt)
  state = train.init_train_state(
    reward.init_reward_params(CFG, jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1)
  )
  for _ in range(40):
    state, m = step(state, batch)
  assert float(m["loss"]) < 0.2, float(m["loss"])


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("mode", ["logprob", "entropy"])
def test_generator_confidence_on_bigram_matches_hand_computation(mode):
  V, DELIM = 6, 5
  table = jax.random.normal(jax.random.PRNGKey(3), (V, V)) * 2.0
  lp = _np_log_softmax(table)
  scorer = reward.GeneratorConfidence(BigramLM(V), delimiter_ids=(DELIM,), mode=mode)
  prompt = [[1, 2, 0], [3, 0, 0]]
  lengths = np.array([3, 1])
  conts = [[4, 1, DELIM, 2, 3, DELIM, 1], [DELIM, 2, 2, 4, DELIM, 0, 3]]

  # Hand computation: per-token statistic under the bigram distribution.
  want = []
  for b in range(2):
    prev = prompt[b][lengths[b] - 1]
    acc, out = [], []
    for t in conts[b]:
      x = (
        lp[prev, t] if mode == "logprob" else float((np.exp(lp[prev]) * lp[prev]).sum())
      )
      acc.append(x)
      out.append(math.exp(sum(acc) / len(acc)))
      if t == DELIM:
        acc = []
      prev = t
    want.append(out)

  state, s0 = scorer.prefill(table, jnp.array(prompt), jnp.asarray(lengths), 0)
  np.testing.assert_allclose(np.asarray(s0), [1.0, 1.0])
  got = [[], []]
  pos = [0, 0]
  for n_new in ([3, 2], [0, 3], [4, 2]):  # ragged chunks of width 4
    chunk = np.zeros((2, 4), np.int32)
    valid = np.arange(4)[None, :] < np.array(n_new)[:, None]
    for b in range(2):
      chunk[b, : n_new[b]] = conts[b][pos[b] : pos[b] + n_new[b]]
    state, sc = scorer.extend(table, state, jnp.asarray(chunk), jnp.asarray(valid))
    for b in range(2):
      got[b] += list(np.asarray(sc)[b, : n_new[b]])
      pos[b] += n_new[b]
  for b in range(2):
    np.testing.assert_allclose(got[b], want[b], rtol=1e-5)

  # Reorder: swapping rows swaps the continuation's running statistics.
  st2 = scorer.reorder(state, jnp.array([1, 0]))
  np.testing.assert_array_equal(np.asarray(st2.sum_B), np.asarray(state.sum_B)[::-1])
  np.testing.assert_array_equal(np.asarray(scorer.lengths(st2)), [8, 10])


class _ToyTokenizer:
  """One token per character; 'Y' and 'N' are single tokens."""

  alphabet = "abcYNeso?: "

  def encode(self, text):
    return [self.alphabet.index(c) for c in text]


def test_generative_verifier_score_is_normalised_yes_probability():
  tok = _ToyTokenizer()
  V = len(tok.alphabet)
  table = jax.random.normal(jax.random.PRNGKey(4), (V, V)) * 1.5
  p = np.exp(_np_log_softmax(table))
  Y, N = tok.alphabet.index("Y"), tok.alphabet.index("N")
  questions, solutions = ["ab", "ca", "b"], ["c", "a", "bb"]
  template = lambda q, s: f"{q}:{s}?"  # the last prompt token is '?' always
  out = reward.generative_verifier_scores(
    BigramLM(V),
    table,
    tok,
    questions,
    solutions,
    template=template,
    yes_ids=[Y],
    no_ids=[N],
    batch_size=2,
  )
  q = tok.alphabet.index("?")
  want = p[q, Y] / (p[q, Y] + p[q, N])
  np.testing.assert_allclose(out.scores, [want] * 3, rtol=1e-5)
  np.testing.assert_array_equal(out.prompt_tokens, [5, 5, 5])

  # A prompt whose last token differs, and several "yes" tokens summed.
  out = reward.generative_verifier_scores(
    BigramLM(V),
    table,
    tok,
    ["a"],
    ["b"],
    template="{question}{solution}",
    yes_ids=[Y, 0],
    no_ids=[N],
  )
  b = tok.alphabet.index("b")
  want = (p[b, Y] + p[b, 0]) / (p[b, Y] + p[b, 0] + p[b, N])
  np.testing.assert_allclose(out.scores, [want], rtol=1e-5)
  # Default yes/no ids, found in context: after ": " the verdict words are
  # "Yes" / "No", several tokens each here, scored by their first tokens.
  out = reward.generative_verifier_scores(
    BigramLM(V), table, tok, ["a"], ["b"], template="{question}{solution}: "
  )
  s = tok.alphabet.index(" ")
  np.testing.assert_array_equal(out.yes_ids, [[Y]])
  np.testing.assert_array_equal(out.no_ids, [[N]])
  np.testing.assert_allclose(out.scores, [p[s, Y] / (p[s, Y] + p[s, N])], rtol=1e-5)
  np.testing.assert_allclose(out.verdict_mass, [p[s, Y] + p[s, N]], rtol=1e-5)
  # Looked up out of context, "Yes" is several tokens here.
  with pytest.raises(ValueError, match="encodes to 3 tokens"):
    reward.word_token_ids(tok, ["Yes"])
  # After "?" they are " Yes" / " No", whose first tokens are both " ".
  with pytest.raises(ValueError, match="start with the same token"):
    reward.generative_verifier_scores(
      BigramLM(V), table, tok, ["a"], ["b"], template="{question}{solution}?"
    )


def test_exact_checker_scores_follow_step_labels():
  tok = arith.TOKENIZER
  prob = arith.ArithProblem(37, ("+", "-"), (48, 19))  # 85, 66
  good = prob.solution
  bad = "37+48=85\n85-19=67\nA:67"
  checker = reward.ExactChecker(
    tok, arith.step_labels, delimiter_ids=(tok.newline_id, tok.eos_id)
  )
  prompt = tok.encode(prob.prompt, add_bos=True)
  toks = jnp.array([prompt, prompt])
  state, s0 = checker.prefill([prob, prob], toks, jnp.array([len(prompt)] * 2))
  np.testing.assert_array_equal(np.asarray(s0), [1, 1])
  a = tok.encode(good, add_eos=True)
  b = tok.encode(bad, add_eos=True)
  S = max(len(a), len(b))
  chunk = np.zeros((2, S), np.int32)
  chunk[0, : len(a)], chunk[1, : len(b)] = a, b
  valid = np.arange(S)[None] < np.array([len(a), len(b)])[:, None]
  state, sc = checker.extend([prob, prob], state, chunk, valid)
  sc = np.asarray(sc)
  assert sc[0, : len(a)].min() == 1.0
  first_bad_end = bad.index("\n", 9)  # the '\n' after 85-19=67
  assert sc[1, first_bad_end - 1] == 1.0 and sc[1, first_bad_end] == 0.0
  assert sc[1, len(b) - 1] == 0.0
  st = checker.reorder(state, np.array([1, 1, 0]))
  np.testing.assert_array_equal(st.score, [0.0, 0.0, 1.0])


def test_auroc_and_ece_against_brute_force():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, 40) / 4.0  # many ties
  y = rng.random(40) < 0.4
  pos, neg = s[y], s[~y]
  brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
  np.testing.assert_allclose(reward.auroc(s, y), brute, rtol=1e-12)
  assert math.isnan(reward.auroc([0.1, 0.2], [True, True]))
  p = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.55])
  lab = np.array([0, 1, 0, 1, 1, 0])
  # bins: 0 -> {0.05}: |0 - .05|; 1 -> {.15, .12}: |.5 - .135|; 5 -> {.55}: .55;
  # 9 -> {.95, 1.0}: |1 - .975|
  want = (1 * 0.05 + 2 * 0.365 + 1 * 0.55 + 2 * 0.025) / 6
  np.testing.assert_allclose(reward.expected_calibration_error(p, lab), want, rtol=1e-9)


def test_reward_params_roundtrip(tmp_path):
  params = _rm_params(2)
  reward.save_reward_params(str(tmp_path / "rm"), params)
  back = reward.restore_reward_params(str(tmp_path / "rm"), CFG)
  for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
