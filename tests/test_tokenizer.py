"""Tokenizer: GGUF byte-level BPE rebuild and chat templates vs transformers.

A tiny byte-level BPE is trained locally with `tokenizers`, written into a
GGUF the way llama.cpp stores vocabularies, and loaded both by our
`Tokenizer.from_gguf` and by transformers' GGUF tokenizer loader (the
reference). Chat templates are compared with transformers' own rendering.
"""

import gguf
import jinja2
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxllm.tokenizer import Tokenizer, byte_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}\n"
    "  {% if message['role'] not in ['system', 'user', 'assistant'] %}\n"
    "    {{ raise_exception('unknown role ' + message['role']) }}\n"
    "  {% endif %}\n"
    "  {% if loop.first and message['role'] != 'system' %}\n"
    "<|im_start|>system\nYou are tiny.<|im_end|>\n"
    "  {% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<|im_start|>assistant\n"
    "{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(12, 345))\n",
    "naïve café résumé — “quoted” 日本語 テキスト 😀 emoji 🎉",
    "I'm sure they'll say we've done it; don't they?  Spaces   and\ttabs\n\n",
    "0123456789 3.14159 2024-01-31 #include <stdio.h> x += 1; y = x ** 2",
]
TEXTS = [
    "Hello world", "the lazy dog jumps", "  leading and   inner   spaces  ",
    "tabs\tand\nnew\n\nlines\r\n", "naïve 日本語 café", "emoji 😀🎉👩‍👩‍👧 zwj",
    "digits 1234567 and 3.14", "def f(x):\n    return x ** 2  # sq\n",
    "<|im_start|>user\nhi<|im_end|>", "text with <think> inside", "", " ",
    "I'm THEY'LL we've", "unseen Ω≈ç√ symbols ∑",
]
MESSAGES = [{"role": "user", "content": "What is 2+2? 🤔"},
            {"role": "assistant", "content": "4, of course."},
            {"role": "user", "content": "And  3+3?\n"}]


def train_tiny_bpe() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 4, trainer)
  return tok


def write_tokenizer_gguf(path, tok: tokenizers.Tokenizer, pre="smollm",
                         add_bos=False, model="gpt2"):
  """A llama GGUF holding only tokenizer metadata, as llama.cpp writes it."""
  import json
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  merges = spec["model"]["merges"]
  merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  tokens.append("<think>")  # a USER_DEFINED token
  types = [3 if t in SPECIALS else 1 for t in tokens]
  types[-1] = 4
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_context_length(64)
  w.add_embedding_length(8)
  w.add_block_count(1)
  w.add_feed_forward_length(16)
  w.add_head_count(2)
  w.add_head_count_kv(1)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_vocab_size(len(tokens))
  w.add_tokenizer_model(model)
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_unk_token_id(0)
  w.add_add_bos_token(add_bos)
  w.add_chat_template(TEMPLATE)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(dir, our Tokenizer, transformers tokenizer) for the tiny GGUF."""
  from transformers import AutoTokenizer
  d = tmp_path_factory.mktemp("tok")
  write_tokenizer_gguf(d / "tiny.gguf", train_tiny_bpe())
  ours = Tokenizer.from_gguf(d / "tiny.gguf")
  ref = AutoTokenizer.from_pretrained(str(d), gguf_file="tiny.gguf")
  return d, ours, ref


def test_byte_alphabet():
  table = byte_to_unicode()
  assert sorted(table) == list(range(256))
  assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
  assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
  assert table[ord("A")] == "A" and table[0] == "Ā"


def test_gguf_tokenizer_matches_transformers(tiny):
  _, ours, ref = tiny
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id,
                                                     ref.eos_token_id,
                                                     ref.pad_token_id)
  assert ours.vocab_size == len(ref)
  for text in TEXTS:
    ids = ours.encode(text)
    assert ids == ref(text)["input_ids"], text
    assert ours.decode(ids) == ref.decode(ids) == text
  assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
  # Special and user-defined tokens stay whole.
  assert ours.encode("<|im_end|>") == [2]
  assert ours.token_to_id("<think>") in ours.encode("a <think> b")
  assert "<|im_end|>" not in ours.decode(ours.encode("x<|im_end|>"),
                                         skip_special_tokens=True)


def test_chat_template_matches_transformers(tiny):
  _, ours, ref = tiny
  for gen in (True, False):
    text = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen,
                                    tokenize=False)
    assert text == ref.apply_chat_template(MESSAGES, add_generation_prompt=gen,
                                           tokenize=False)
    assert ours.apply_chat_template(MESSAGES, add_generation_prompt=gen) == \
        ref.apply_chat_template(MESSAGES, add_generation_prompt=gen,
                                tokenize=True, return_dict=False)
  # trim_blocks / lstrip_blocks: no stray indentation or blank lines.
  text = ours.render_chat(MESSAGES[:1])
  assert text == ("<|im_start|><|im_start|>system\nYou are tiny.<|im_end|>\n"
                  "<|im_start|>user\nWhat is 2+2? 🤔<|im_end|>\n"
                  "<|im_start|>assistant\n")
  with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role"):
    ours.apply_chat_template([{"role": "robot", "content": "x"}])


def test_from_files_matches_transformers(tiny, tmp_path):
  _, _, ref = tiny
  ref.save_pretrained(str(tmp_path))
  ours = Tokenizer.from_files(tmp_path)
  assert ours.bos_token == ref.bos_token and ours.eos_id == ref.eos_token_id
  for text in TEXTS:
    assert ours.encode(text) == ref(text)["input_ids"], text
  assert ours.apply_chat_template(MESSAGES) == ref.apply_chat_template(
      MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
  # Same via the tokenizer.json path itself.
  again = Tokenizer.from_files(tmp_path / "tokenizer.json")
  assert again.encode(TEXTS[3]) == ours.encode(TEXTS[3])


def test_add_bos_token_flag(tmp_path):
  from transformers import AutoTokenizer
  write_tokenizer_gguf(tmp_path / "bos.gguf", train_tiny_bpe(), add_bos=True)
  ours = Tokenizer.from_gguf(tmp_path / "bos.gguf")
  ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bos.gguf")
  for text in TEXTS[:4]:
    assert ours.encode(text) == ref(text)["input_ids"]
    assert ours.encode(text)[0] == 1
    assert ours.encode(text, add_special_tokens=False) == ref(
        text, add_special_tokens=False)["input_ids"]
  # The chat template writes its own bos; no extra one is added.
  ids = ours.apply_chat_template(MESSAGES)
  assert ids[:2] == [1, 1] and ids[2] != 1


def test_template_helpers_and_errors(tmp_path, tiny):
  _, ours, _ = tiny
  t = Tokenizer(ours.backend, eos_token="<|im_end|>",
                chat_template="{{ messages | tojson }}|{{ eos_token }}")
  assert t.render_chat([{"role": "user", "content": "café <b>"}]) == \
      '[{"role": "user", "content": "café <b>"}]|<|im_end|>'
  with pytest.raises(ValueError, match="no chat template"):
    Tokenizer(ours.backend).apply_chat_template(MESSAGES)
  with pytest.raises(ValueError, match="bos_token '<nope>'"):
    Tokenizer(ours.backend, bos_token="<nope>")
  with pytest.raises(ValueError, match="tokenizer file"):
    Tokenizer.from_files(tmp_path / "missing")
  with pytest.raises(ValueError, match="encode expects a str"):
    ours.encode(["a"])
  write_tokenizer_gguf(tmp_path / "pre.gguf", train_tiny_bpe(), pre="mystery")
  with pytest.raises(ValueError, match="tokenizer.ggml.pre='mystery'"):
    Tokenizer.from_gguf(tmp_path / "pre.gguf")
  write_tokenizer_gguf(tmp_path / "spm.gguf", train_tiny_bpe(), model="llama")
  with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'"):
    Tokenizer.from_gguf(tmp_path / "spm.gguf")
