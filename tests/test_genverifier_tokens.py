"""The generative verifier's verdict tokens, found in context, on tokenizers
built here whose answers are checkable by hand (a byte-level BPE like
SmolLM2's, a SentencePiece-style Metaspace BPE), and its scores against
transformers' logits of a tiny random HF model (tests/_hf_models.py)."""

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

import _hf_models as hfm
from jaxllm import hf, reward
from jaxllm.decoding import Transformer
from jaxllm.tokenizer import Tokenizer, build_byte_level_bpe, byte_to_unicode
from jaxllm.validation import check_token_ids

# Byte-level BPE: the 256 byte symbols in byte order (id of byte b = b, so
# "A" = 65, ":" = 58, " " = "Ġ" = 32, "\n" = "Ċ" = 10), then five merged tokens.
MERGED = ["Ye", "Yes", "ĠYes", "No", "ĠNo"]
ID = {t: 256 + i for i, t in enumerate(MERGED)}
V = 256 + len(MERGED)


@pytest.fixture(scope="module")
def bpe():
  spell = byte_to_unicode()
  tokens = [spell[b] for b in range(256)] + MERGED
  merges = ["Y e", "Ye s", "Ġ Yes", "N o", "Ġ No"]
  return Tokenizer(build_byte_level_bpe(tokens, merges, [1] * len(tokens)))


def _bytes(text):
  return list(text.encode())


def test_byte_level_bpe_verdict_ids_by_hand(bpe):
  # The tokenizer itself, by hand: "Yes" alone is one token, " Yes" another.
  assert bpe.encode("Answer: Yes") == _bytes("Answer:") + [ID["ĠYes"]]
  assert bpe.encode("Yes") == [ID["Yes"]]
  # After "Answer:" the model writes " Yes" / " No": the context is the whole
  # prompt and the verdict ids are the space-prefixed tokens.
  ctx, ids = reward.verdict_token_ids(bpe, "Answer:", (" Yes", " No"))
  assert ctx == _bytes("Answer:") and ids == [ID["ĠYes"], ID["ĠNo"]]
  assert reward.default_verdict_words("Answer:") == (" Yes", " No")
  assert reward.default_verdict_words("assistant\n") == ("Yes", "No")
  # The out-of-context lookup (the old default) gives the no-space tokens.
  assert reward.word_token_ids(bpe, ["Yes", "No"]) == [ID["Yes"], ID["No"]]


def test_boundary_merge_moves_the_space_into_the_verdict(bpe):
  # "Answer: " ends in its own " " token, but "Answer: Yes" spells the space
  # inside " Yes": the verifier reads "Answer:" and scores " Yes" / " No".
  assert bpe.encode("Answer: ") == _bytes("Answer: ")
  words = reward.default_verdict_words("Answer: ")
  assert words == ("Yes", "No")
  ctx, ids = reward.verdict_token_ids(bpe, "Answer: ", words)
  assert ctx == _bytes("Answer:") and ids == [ID["ĠYes"], ID["ĠNo"]]


def test_multi_token_words_use_their_first_token(bpe):
  # After a newline, "Yep" = [Ye, p] and "Nope" = [No, p, e]: first tokens.
  assert bpe.encode("A\nYep") == _bytes("A\n") + [ID["Ye"], ord("p")]
  ctx, ids = reward.verdict_token_ids(bpe, "A\n", ("Yep", "Nope"))
  assert ctx == _bytes("A\n") and ids == [ID["Ye"], ID["No"]]
  # " Yep" = [Ġ, Ye, p] and " Yeah" = [Ġ, Ye, a, h] share the first token.
  assert bpe.encode("A: Yeah") == _bytes("A: ") + [ID["Ye"]] + _bytes("ah")
  with pytest.raises(
    ValueError,
    match=r"verdict words \[' Yep', ' Yeah'\] "
    r"start with the same token",
  ):
    reward.verdict_token_ids(bpe, "A:", (" Yep", " Yeah"))
  with pytest.raises(ValueError, match="verdict word '' adds no token"):
    reward.verdict_token_ids(bpe, "A:", (" Yes", ""))


def test_sentencepiece_style_verdict_ids():
  chars = sorted(set("Is it right? Answer:YesNo") - {" "})
  vocab = {c: i for i, c in enumerate(["▁"] + chars)}
  extra = ["Ye", "Yes", "▁Yes", "No", "▁No"]
  for t in extra:
    vocab[t] = len(vocab)
  backend = tokenizers.Tokenizer(
    models.BPE(
      vocab=vocab,
      merges=[("Y", "e"), ("Ye", "s"), ("▁", "Yes"), ("N", "o"), ("▁", "No")],
    )
  )
  backend.pre_tokenizer = pre_tokenizers.Metaspace(
    replacement="▁", prepend_scheme="first"
  )
  backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
  tok = Tokenizer(backend)
  prompt = "Is it right? Answer:"
  base = tok.encode(prompt)
  assert tok.encode(prompt + " Yes") == base + [vocab["▁Yes"]]
  ctx, ids = reward.verdict_token_ids(tok, prompt, (" Yes", " No"))
  assert ctx == base and ids == [vocab["▁Yes"], vocab["▁No"]]
  # A prompt ending in a space: the space goes into "▁Yes" as well.
  ctx, ids = reward.verdict_token_ids(
    tok, prompt + " ", reward.default_verdict_words(prompt + " ")
  )
  assert ctx == base and ids == [vocab["▁Yes"], vocab["▁No"]]


# ---------------------------------------------------------------------------
# Scores against transformers.


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  """A tiny random Llama (vocab V, matching the BPE) in transformers and the
  same weights loaded into ours."""
  import torch
  import transformers

  _, kw = hfm.CASES["llama_gqa_untied"]
  model = transformers.AutoModelForCausalLM.from_config(
    transformers.LlamaConfig(**{**hfm._COMMON, **kw, "vocab_size": V}),
    attn_implementation="eager",
    dtype=torch.float32,
  )
  hfm.randomize_(model, seed=3)
  model.eval()
  d = str(tmp_path_factory.mktemp("genverifier_lm"))
  model.save_pretrained(d)
  cfg, params = hf.load_hf(d)
  return model, Transformer(cfg), params


def _hf_next_probs(model, ids):
  """Next-token distribution after `ids` from transformers, float64."""
  z = hfm.hf_logits(model, np.asarray([ids]))[0, -1].astype(np.float64)
  p = np.exp(z - z.max())
  return p / p.sum()


QUESTIONS = ["What is 2 + 3?", "Is 7 prime?", "Name a colour."]
SOLUTIONS = ["2 + 3 = 5.", "Yes, 7 has no divisor but 1 and 7.", "Blue"]


@pytest.mark.parametrize(
  "template,context",
  [
    # The default template ends in "Answer:"; the verifier reads it all.
    (
      reward.DEFAULT_VERIFIER_TEMPLATE,
      lambda q, s: reward.DEFAULT_VERIFIER_TEMPLATE.format(question=q, solution=s),
    ),
    # A trailing space is merged into " Yes": the verifier reads "...A:".
    ("Q {question} S {solution} A: ", lambda q, s: f"Q {q} S {s} A:"),
  ],
  ids=["default_template", "trailing_space"],
)
def test_scores_and_mass_match_transformers(bpe, tiny_lm, template, context):
  model, ours, params = tiny_lm
  prefix = [ord("#")]
  out = reward.generative_verifier_scores(
    ours,
    params,
    bpe,
    QUESTIONS,
    SOLUTIONS,
    template=template,
    prefix_ids=prefix,
    extra_ids=[ID["Yes"], ID["No"], 7],
    batch_size=2,
  )
  want_s, want_lo, want_m, want_x, want_len = [], [], [], [], []
  for q, s in zip(QUESTIONS, SOLUTIONS):
    ids = prefix + bpe.encode(context(q, s))
    p = _hf_next_probs(model, ids)
    y, n = p[ID["ĠYes"]], p[ID["ĠNo"]]
    want_s.append(y / (y + n))
    want_lo.append(np.log(y / n))
    want_m.append(y + n)
    want_x.append(np.log(p[[ID["Yes"], ID["No"], 7]]))
    want_len.append(len(ids))
  np.testing.assert_array_equal(out.prompt_tokens, want_len)
  np.testing.assert_array_equal(out.yes_ids, [[ID["ĠYes"]]] * 3)
  np.testing.assert_array_equal(out.no_ids, [[ID["ĠNo"]]] * 3)
  np.testing.assert_allclose(out.scores, want_s, rtol=1e-4)
  # Log-odds too: a score near 1 hides errors in 1 - score.
  np.testing.assert_allclose(np.log(out.scores / (1 - out.scores)), want_lo, atol=1e-3)
  np.testing.assert_allclose(out.verdict_mass, want_m, rtol=1e-4)
  np.testing.assert_allclose(out.extra_logprobs, want_x, atol=1e-4)
  # Not the constant 0.5 that out-of-range ids used to give.
  assert np.abs(out.scores - 0.5).min() > 1e-3 and out.verdict_mass.min() > 0


def test_explicit_ids_read_the_whole_prompt(bpe, tiny_lm):
  model, ours, params = tiny_lm
  out = reward.generative_verifier_scores(
    ours,
    params,
    bpe,
    QUESTIONS[:1],
    SOLUTIONS[:1],
    template="{question} {solution} A: ",
    yes_ids=[ID["Yes"], ID["Ye"]],
    no_ids=[ID["No"]],
  )
  ids = bpe.encode(f"{QUESTIONS[0]} {SOLUTIONS[0]} A: ")  # ends in " "
  p = _hf_next_probs(model, ids)
  y, n = p[ID["Yes"]] + p[ID["Ye"]], p[ID["No"]]
  np.testing.assert_array_equal(out.prompt_tokens, [len(ids)])
  np.testing.assert_allclose(out.scores, [y / (y + n)], rtol=1e-4)
  np.testing.assert_allclose(out.verdict_mass, [y + n], rtol=1e-4)


# ---------------------------------------------------------------------------
# Bad ids raise, with the shared message, before any model call.


class _NoCallModel:
  """A decode-interface model that must not be called."""

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def prefill(self, *args, **kwargs):
    raise AssertionError("the model was called")


def _shared_message(name, ids, vocab_size):
  with pytest.raises(ValueError) as e:
    check_token_ids(name, ids, vocab_size)
  return str(e.value)


@pytest.mark.parametrize(
  "kwargs,name,ids,vocab",
  [
    (dict(prefix_ids=[V]), "prefix_ids", [V], V),
    (dict(yes_ids=[V], no_ids=[1]), "yes_ids", [V], V),
    (dict(yes_ids=[0], no_ids=[-1]), "no_ids", [-1], V),
    (dict(yes_ids=[0], no_ids=[1.5]), "no_ids", [1.5], V),
    (dict(extra_ids=[2**40]), "extra_ids", [2**40], V),
    (dict(pad_id=V), "pad_id", V, V),
    # The tokenizer's ids exceed a smaller model vocabulary.
    (dict(yes_ids=[0], no_ids=[1]), "verifier prompt ids", "PROMPT", 100),
    # Derived verdict ids (" Yes" = 258) beyond V = 258.
    (dict(), "yes_ids (derived from the verdict words)", [[ID["ĠYes"]]], ID["ĠYes"]),
  ],
  ids=["prefix", "yes", "no_negative", "no_float", "extra", "pad", "prompt", "derived"],
)
def test_bad_ids_raise_before_any_model_call(bpe, kwargs, name, ids, vocab):
  if ids == "PROMPT":
    ids = bpe.encode(
      reward.DEFAULT_VERIFIER_TEMPLATE.format(question="q", solution="s")
    )
  with pytest.raises(ValueError) as e:
    reward.generative_verifier_scores(
      _NoCallModel(vocab), None, bpe, ["q"], ["s"], **kwargs
    )
  assert str(e.value) == _shared_message(name, ids, vocab)


def test_bad_arguments_raise(bpe):
  m = _NoCallModel(V)
  with pytest.raises(ValueError, match="pass both yes_ids and no_ids"):
    reward.generative_verifier_scores(m, None, bpe, ["q"], ["s"], yes_ids=[1])
  with pytest.raises(ValueError, match="must be disjoint"):
    reward.generative_verifier_scores(
      m, None, bpe, ["q"], ["s"], yes_ids=[1, 2], no_ids=[2]
    )
  with pytest.raises(ValueError, match="yes_ids must not be empty"):
    reward.generative_verifier_scores(
      m, None, bpe, ["q"], ["s"], yes_ids=[], no_ids=[2]
    )
  with pytest.raises(ValueError, match=r"verdict words \[' Yep', ' Yeah'\]"):
    reward.generative_verifier_scores(
      m, None, bpe, ["q"], ["s"], verdict_words=(" Yep", " Yeah")
    )
