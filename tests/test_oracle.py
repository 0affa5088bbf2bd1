"""jaxllm.reward.ReferenceOracle: the in-graph exact / noisy step oracle.

References: the exact labels against arith.step_labels (the host-side
checker, an independent implementation) on every prefix of mutated
solutions; the noise against its closed forms (flip rate = eps; wrong side
of 0.5 with Gaussian logit noise = Phi(-m / sigma)) with binomial tests at
a false-alarm rate of 1e-6; determinism per (seed, prefix) checked by
re-scoring the same prefixes in other rows, chunks and batches.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import verifiers as vlib
from experiments.tasks import arith
from jaxllm import reward

TOK = arith.TOKENIZER
ORACLE = vlib.oracle_model()
PREFILL, EXTEND = jax.jit(ORACLE.prefill), jax.jit(ORACLE.extend)
REORDER = jax.jit(ORACLE.reorder)
ALPHA = 1e-6  # false-alarm rate of each statistical test
# step_labels parses integers, the oracle compares tokens: they differ only on
# numbers written with a leading zero or as -0 (documented on ReferenceOracle).
INT_SPELLING = re.compile(r"(?<!\d)0\d|-0")


def _mutate(rng, text: str) -> str:
  """A random edit of a solution: substitute / insert / delete characters,
  cut it, or add a line."""
  chars = list(text)
  for _ in range(int(rng.integers(0, 3))):
    op = rng.integers(4)
    i = int(rng.integers(0, len(chars) + 1))
    c = "0123456789+-*=\nA:"[int(rng.integers(17))]
    if op == 0 and i < len(chars):
      chars[i] = c
    elif op == 1:
      chars.insert(i, c)
    elif op == 2 and i < len(chars):
      del chars[i]
    else:
      chars = chars[:i]
  out = "".join(chars)
  if rng.random() < 0.2:
    out += "\n1+1=2"
  return out


def _batch(problems, texts, eos=True):
  """Right-padded prompts [B, T] + lengths, solution tokens [B, S] + valid."""
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  sols = [TOK.encode(t, add_eos=eos) for t in texts]
  T, S = max(map(len, prompts)), max(1, max(map(len, sols)))
  pt = np.zeros((len(prompts), T), np.int32)
  st = np.zeros((len(sols), S), np.int32)
  for i, (a, b) in enumerate(zip(prompts, sols)):
    pt[i, : len(a)], st[i, : len(b)] = a, b
  plen = np.array([len(a) for a in prompts])
  valid = np.arange(S)[None] < np.array([len(b) for b in sols])[:, None]
  return pt, plen, st, valid


@jax.jit
def _score(params, pt, plen, st, valid):
  state, s0 = ORACLE.prefill(params, pt, plen)
  return s0, ORACLE.extend(params, state, st, valid)[1]


def _reference_label(problem, ids) -> float:
  labels = arith.step_labels(problem, TOK.decode(ids))
  return float(labels[-1]) if labels else 0.0


def test_exact_oracle_equals_step_labels_on_every_prefix():
  rng = np.random.default_rng(0)
  problems = arith.generate(60, 1, n_steps=(2, 4), n_digits=2)
  texts = [
    p.solution if i % 4 == 0 else _mutate(rng, p.solution)
    for i, p in enumerate(problems)
  ]
  keep = [i for i, t in enumerate(texts) if not INT_SPELLING.search(t)]
  problems = [problems[i] for i in keep]
  texts = [texts[i] for i in keep]
  params = reward.oracle_params(vlib.reference_lines(problems))
  pt, plen, st, valid = _batch(problems, texts)
  s0, sc = map(np.asarray, _score(params, pt, plen, st, valid))
  np.testing.assert_array_equal(s0, 1.0)
  n_right = 0
  for b, p in enumerate(problems):
    n = int(valid[b].sum())
    want = [_reference_label(p, st[b, : j + 1]) for j in range(n)]
    np.testing.assert_array_equal(sc[b, :n], want, err_msg=repr(texts[b]))
    n_right += want[-1] == 1.0
  assert 10 < n_right < len(problems)  # both labels occur


def test_scores_do_not_depend_on_chunking_rows_or_batch():
  problems = arith.generate(6, 2, n_digits=1)
  rng = np.random.default_rng(1)
  texts = [_mutate(rng, p.solution) for p in problems]
  params = reward.oracle_params(vlib.reference_lines(problems), flip_prob=0.3)
  pt, plen, st, valid = _batch(problems, texts)
  _, whole = _score(params, pt, plen, st, valid)
  # the same rows in two chunks, after a fork into 2 copies each + reorder
  state, _ = PREFILL(params, pt, plen)
  state = REORDER(state, jnp.zeros((6, 2), jnp.int32))
  two = lambda x: np.repeat(x, 2, 0)
  h = st.shape[1] // 2
  state, a = EXTEND(params, state, two(st[:, :h]), two(valid[:, :h]))
  state = REORDER(state, jnp.arange(12)[::-1])
  _, b = EXTEND(params, state, two(st[:, h:])[::-1], two(valid[:, h:])[::-1])
  chunked = np.concatenate([np.asarray(a), np.asarray(b)[::-1]], 1)
  np.testing.assert_array_equal(
    np.where(two(valid), chunked, 0), np.where(two(valid), two(np.asarray(whole)), 0)
  )
  # one problem alone (another batch) gets the same scores as in the batch
  sub = jax.tree_util.tree_map(lambda x: x[3:4] if x.ndim else x, params)
  _, alone = _score(sub, pt[3:4], plen[3:4], st[3:4], valid[3:4])
  np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(whole)[3])


def _noisy_labels(params, n_rows=400, length=40, seed=0):
  """(exact labels, scores) of n_rows * length distinct random prefixes."""
  problems = arith.generate(n_rows, seed, n_digits=1)
  lines = vlib.reference_lines(problems)
  exact = reward.oracle_params(lines)
  noisy = reward.oracle_params(
    lines,
    seed=int(params["seed"]),
    flip_prob=params["flip"],
    logit_noise=params["sigma"],
    margin=params["margin"],
  )
  rng = np.random.default_rng(seed)
  # half the rows start with the reference solution (label 1 prefixes too)
  texts = []
  for i, p in enumerate(problems):
    tail = "".join(rng.choice(list("0123456789+-*=\n"), length))
    texts.append((p.solution + "\n" if i % 2 else "") + tail)
  pt, plen, st, valid = _batch(problems, texts, eos=False)
  _, lab = _score(exact, pt, plen, st, valid)
  _, sc = _score(noisy, pt, plen, st, valid)
  return np.asarray(lab)[valid], np.asarray(sc)[valid]


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_flip_rate_equals_eps(eps):
  lab, sc = _noisy_labels({"seed": 3, "flip": eps, "sigma": 0.0, "margin": 2.0})
  assert set(np.unique(sc)) <= {0.0, 1.0}
  flips = int((sc != lab).sum())
  assert stats.binomtest(flips, sc.size, eps).pvalue > ALPHA, (flips / sc.size, eps)
  for y in (0.0, 1.0):  # the same rate on either label
    m = lab == y
    assert m.sum() > 1000
    k = int((sc[m] != y).sum())
    assert stats.binomtest(k, int(m.sum()), eps).pvalue > ALPHA


def test_gaussian_logit_noise_wrong_side_rate():
  sigma, margin = 2.0, 1.5
  lab, sc = _noisy_labels({"seed": 4, "flip": 0.0, "sigma": sigma, "margin": margin})
  wrong = int(((sc > 0.5) != (lab > 0.5)).sum())
  p = stats.norm.cdf(-margin / sigma)
  assert stats.binomtest(wrong, sc.size, p).pvalue > ALPHA, (wrong / sc.size, p)
  # logit = +-margin + sigma z: its mean on each label is +-margin
  logit = np.log(sc / (1 - sc))
  for y, sign in ((1.0, 1.0), (0.0, -1.0)):
    x = logit[lab == y]
    assert abs(x.mean() - sign * margin) < 6 * sigma / np.sqrt(x.size)


def test_noise_levels_share_their_random_numbers_and_seed_matters():
  """Flips at eps = 0.1 are a subset of flips at eps = 0.3 (one uniform per
  prefix); another seed flips other prefixes."""
  lab, a = _noisy_labels({"seed": 5, "flip": 0.1, "sigma": 0.0, "margin": 2.0}, 100)
  _, b = _noisy_labels({"seed": 5, "flip": 0.3, "sigma": 0.0, "margin": 2.0}, 100)
  _, c = _noisy_labels({"seed": 6, "flip": 0.1, "sigma": 0.0, "margin": 2.0}, 100)
  fa, fb, fc = a != lab, b != lab, c != lab
  assert fa.sum() > 100 and not (fa & ~fb).any()
  assert (fa != fc).mean() > 0.1


def test_pool_noise_equals_search_noise():
  """`verifiers.pool_for` (noise from stored prefix hashes) gives the scores
  the oracle gives the same prefixes during a search (extend)."""
  import ml_collections

  problems = arith.generate(4, 7, n_digits=1)
  rng = np.random.default_rng(2)
  N, L, S = 3, 40, 6
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  toks = np.zeros((4, N, L), np.int32)
  lens = np.zeros((4, N), np.int32)
  for p, prob in enumerate(problems):
    for n in range(N):
      ids = TOK.encode(_mutate(rng, prob.solution), add_eos=True)[:L]
      toks[p, n, : len(ids)], lens[p, n] = ids, len(ids)
  arr = vlib.pool_oracle_arrays(problems, prompts, toks, lens, S, rows_per_call=6)
  gen_ends = [
    [
      np.flatnonzero(
        (toks[p, n, : lens[p, n]] == TOK.newline_id)
        | (toks[p, n, : lens[p, n]] == TOK.eos_id)
      )[:S]
      for n in range(N)
    ]
    for p in range(4)
  ]
  mask = np.zeros((4, N, S), bool)
  for p in range(4):
    for n in range(N):
      mask[p, n, : len(gen_ends[p][n])] = True
  correct = np.zeros((4, N), bool)
  pool = dict(
    arr,
    prm_mask=mask,
    correct=correct,
    orm=np.zeros((4, N)),
    prm_steps=np.zeros((4, N, S)),
  )
  cfg = ml_collections.ConfigDict({"oracle_seed": 9, "oracle_margin": 2.0})
  v = vlib.parse_verifier("flip0.4")
  got = vlib.pool_for(pool, "flip0.4", cfg)["prm_steps"]
  params = vlib.oracle_params(problems, v, cfg)
  pt, plen, _, _ = _batch(problems, [""] * 4)
  flat = toks.reshape(4 * N, L)
  valid = np.arange(L)[None] < lens.reshape(-1)[:, None]
  state, _ = PREFILL(params, pt, plen)
  state = REORDER(state, jnp.zeros((4, N), jnp.int32))
  _, sc = EXTEND(params, state, flat, valid)
  sc = np.asarray(sc).reshape(4, N, L)
  for p in range(4):
    for n in range(N):
      e = gen_ends[p][n]
      np.testing.assert_array_equal(got[p, n, : len(e)], sc[p, n, e])


def test_oracle_guides_a_search_and_is_charged_its_stand_in_flops():
  """Particle filtering runs with the oracle behind ModelStepScorer (jitted);
  with `cfg` it is charged that verifier's FLOPs, without it nothing."""
  from _tiny_policy import save_tiny_policy  # noqa: F401 (tests/ on the path)

  from algorithms import methods
  from algorithms.scorers import ModelStepScorer
  from jaxllm import Transformer, init_params
  from jaxllm.config import ModelConfig

  cfg = ModelConfig(
    vocab_size=TOK.vocab_size,
    d_model=16,
    n_layers=1,
    n_heads=2,
    n_kv_heads=2,
    d_ff=32,
    max_seq_len=64,
  )
  params = init_params(cfg, jax.random.key(0))
  problems = arith.generate(3, 0, n_digits=1)
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  m = methods.method(
    "pf",
    delimiter_ids=(TOK.newline_id,),
    stop_ids=(TOK.eos_id,),
    pad_id=TOK.pad_id,
    max_steps=3,
    max_step_tokens=4,
    allow_no_stop=True,
  )
  oparams = reward.oracle_params(vlib.reference_lines(problems), flip_prob=0.1)
  recs = {}
  for name, ocfg in (("charged", cfg), ("free", None)):
    out = methods.run(
      m,
      Transformer(cfg),
      params,
      prompts,
      jax.random.key(1),
      4,
      scorer=ModelStepScorer(vlib.oracle_model(ocfg)),
      scorer_params=oparams,
    )
    recs[name] = out.compute
    assert np.asarray(out.candidates).shape[:2] == (3, 4)
  assert recs["charged"].verifier_flops > 0 and recs["free"].verifier_flops == 0
  assert recs["charged"].generated_tokens == recs["free"].generated_tokens


def test_oracle_params_reject_bad_values():
  lines = vlib.reference_lines(arith.generate(2, 0))
  with pytest.raises(ValueError, match="flip_prob"):
    reward.oracle_params(lines, flip_prob=1.5)
  with pytest.raises(ValueError, match="logit_noise"):
    reward.oracle_params(lines, logit_noise=-1.0)
  with pytest.raises(ValueError, match="margin"):
    reward.oracle_params(lines, margin=0.0)
  with pytest.raises(ValueError, match="no problems"):
    reward.oracle_params([])
  with pytest.raises(ValueError, match="config.verifiers: unknown verifier"):
    vlib.parse_verifier("flipp0.1")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    vlib.parse_verifier("flip1.5")
  # One spelling per verifier, so no noise level is swept twice under two names.
  for bad, good in (
    ("flip0.10", "flip0.1"),
    ("flip00000.1", "flip0.1"),
    ("gauss2.0", "gauss2"),
  ):
    with pytest.raises(ValueError, match=f"write '{bad}' as '{good}'"):
      vlib.parse_verifier(bad)
  for zero in ("flip0", "gauss0.0"):
    with pytest.raises(ValueError, match="is the exact oracle"):
      vlib.parse_verifier(zero)
  assert vlib.parse_verifier("flip0.05").flip_prob == 0.05
  assert vlib.parse_verifier("gauss2").logit_noise == 2.0
