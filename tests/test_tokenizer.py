"""Tokenizer: GGUF byte-level BPE rebuild and chat templates vs transformers.

A tiny byte-level BPE is trained locally with `tokenizers`, written into a
GGUF the way llama.cpp stores vocabularies, and loaded both by our
`Tokenizer.from_gguf` and by transformers' GGUF tokenizer loader (the
reference). Chat templates are compared with transformers' own rendering.
Which special tokens `encode` adds is compared with transformers'
AutoTokenizer and PreTrainedTokenizerFast on tokenizer files written locally
in each layout: post-processor only (Llama-3), add_bos_token flag only
(Llama-2 / SmolLM style tokenizer_config.json), both, add_eos_token, and the
GGUF flags.
"""

import json
import warnings

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
  "{% endif %}"
)
CORPUS = [
  "The quick brown fox jumps over the lazy dog. " * 3,
  "def add(a, b):\n    return a + b\n\nprint(add(12, 345))\n",
  "naïve café résumé — “quoted” 日本語 テキスト 😀 emoji 🎉",
  "I'm sure they'll say we've done it; don't they?  Spaces   and\ttabs\n\n",
  "0123456789 3.14159 2024-01-31 #include <stdio.h> x += 1; y = x ** 2",
]
TEXTS = [
  "Hello world",
  "the lazy dog jumps",
  "  leading and   inner   spaces  ",
  "tabs\tand\nnew\n\nlines\r\n",
  "naïve 日本語 café",
  "emoji 😀🎉👩‍👩‍👧 zwj",
  "digits 1234567 and 3.14",
  "def f(x):\n    return x ** 2  # sq\n",
  "<|im_start|>user\nhi<|im_end|>",
  "text with <think> inside",
  "",
  " ",
  "I'm THEY'LL we've",
  "unseen Ω≈ç√ symbols ∑",
]
MESSAGES = [
  {"role": "user", "content": "What is 2+2? 🤔"},
  {"role": "assistant", "content": "4, of course."},
  {"role": "user", "content": "And  3+3?\n"},
]


def train_tiny_bpe() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=SPECIALS,
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(CORPUS * 4, trainer)
  return tok


def write_tokenizer_gguf(
  path,
  tok: tokenizers.Tokenizer,
  pre="smollm",
  add_bos=False,
  model="gpt2",
  add_eos=None,
  extra=None,
):
  """A llama GGUF holding only tokenizer metadata, as llama.cpp writes it.

  add_bos / add_eos None leave the key out; `extra` maps further metadata
  keys to (value, gguf.GGUFValueType) and replaces the standard keys."""
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
  extra = dict(extra or {})
  standard = [
    ("tokenizer.ggml.model", w.add_tokenizer_model, model),
    ("tokenizer.ggml.pre", w.add_tokenizer_pre, pre),
    ("tokenizer.ggml.tokens", w.add_token_list, tokens),
    ("tokenizer.ggml.token_type", w.add_token_types, types),
    ("tokenizer.ggml.merges", w.add_token_merges, merges),
    ("tokenizer.ggml.bos_token_id", w.add_bos_token_id, 1),
    ("tokenizer.ggml.eos_token_id", w.add_eos_token_id, 2),
    ("tokenizer.ggml.padding_token_id", w.add_pad_token_id, 0),
    ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id, 0),
    ("tokenizer.ggml.add_bos_token", w.add_add_bos_token, add_bos),
    ("tokenizer.ggml.add_eos_token", w.add_add_eos_token, add_eos),
    ("tokenizer.chat_template", w.add_chat_template, TEMPLATE),
  ]
  for key, add, value in standard:
    if key not in extra and value is not None:
      add(value)
  for key, (value, vtype) in extra.items():
    if vtype == gguf.GGUFValueType.ARRAY:
      w.add_array(key, value)
    else:
      w.add_key_value(key, value, vtype)
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
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
    ref.bos_token_id,
    ref.eos_token_id,
    ref.pad_token_id,
  )
  assert ours.vocab_size == len(ref)
  for text in TEXTS:
    ids = ours.encode(text)
    assert ids == ref(text)["input_ids"], text
    assert ours.decode(ids) == ref.decode(ids) == text
  assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
  # Special and user-defined tokens stay whole.
  assert ours.encode("<|im_end|>") == [2]
  assert ours.token_to_id("<think>") in ours.encode("a <think> b")
  assert "<|im_end|>" not in ours.decode(
    ours.encode("x<|im_end|>"), skip_special_tokens=True
  )


def test_chat_template_matches_transformers(tiny):
  _, ours, ref = tiny
  for gen in (True, False):
    text = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)
    assert text == ref.apply_chat_template(
      MESSAGES, add_generation_prompt=gen, tokenize=False
    )
    assert ours.apply_chat_template(
      MESSAGES, add_generation_prompt=gen
    ) == ref.apply_chat_template(
      MESSAGES, add_generation_prompt=gen, tokenize=True, return_dict=False
    )
  # trim_blocks / lstrip_blocks: no stray indentation or blank lines.
  text = ours.render_chat(MESSAGES[:1])
  assert text == (
    "<|im_start|><|im_start|>system\nYou are tiny.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2? 🤔<|im_end|>\n"
    "<|im_start|>assistant\n"
  )
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
    MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
  )
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
    assert (
      ours.encode(text, add_special_tokens=False)
      == ref(text, add_special_tokens=False)["input_ids"]
    )
  # The chat template writes its own bos; no extra one is added.
  ids = ours.apply_chat_template(MESSAGES)
  assert ids[:2] == [1, 1] and ids[2] != 1


def test_template_helpers_and_errors(tmp_path, tiny):
  _, ours, _ = tiny
  t = Tokenizer(
    ours.backend,
    eos_token="<|im_end|>",
    chat_template="{{ messages | tojson }}|{{ eos_token }}",
  )
  assert (
    t.render_chat([{"role": "user", "content": "café <b>"}])
    == '[{"role": "user", "content": "café <b>"}]|<|im_end|>'
  )
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


# ---------------------------------------------------------------------------
# Which special tokens encode adds, layout by layout, vs transformers
# ---------------------------------------------------------------------------
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
LAYOUT_TEXTS = TEXTS[:6] + ["", "<|begin_of_text|>already here"]


@pytest.fixture(scope="module")
def llama3_bpe():
  """The tiny BPE with Llama-3's bos / eos as special tokens."""
  tok = train_tiny_bpe()
  tok.add_special_tokens([BOS, EOS])
  return tok


def write_layout(d, base, post, conf, *, truncate=False):
  """tokenizer.json (+ tokenizer_config.json) in one layout.

  post: None (no post-processor), "bytelevel" (SmolLM2's), "bos" (Llama-3's
  TemplateProcessing), "eos" or "bos_eos". conf: tokenizer_config.json
  fields on top of bos/eos tokens."""
  from tokenizers import processors

  tok = tokenizers.Tokenizer.from_str(base.to_str())
  ids = {BOS: tok.token_to_id(BOS), EOS: tok.token_to_id(EOS)}
  if post == "bytelevel":
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  elif post is not None:
    single = {
      "bos": f"{BOS}:0 $A:0",
      "eos": f"$A:0 {EOS}:0",
      "bos_eos": f"{BOS}:0 $A:0 {EOS}:0",
    }[post]
    tok.post_processor = processors.TemplateProcessing(
      single=single,
      pair=f"{single} $B:1",
      special_tokens=[(t, i) for t, i in ids.items() if t in single],
    )
  if truncate:
    tok.enable_truncation(max_length=2)
    tok.enable_padding(length=40, pad_id=0, pad_token=SPECIALS[0])
  d.mkdir(parents=True, exist_ok=True)
  tok.save(str(d / "tokenizer.json"))
  with open(d / "tokenizer_config.json", "w") as f:
    json.dump(
      {
        "bos_token": BOS,
        "eos_token": EOS,
        "tokenizer_class": "PreTrainedTokenizerFast",
        **conf,
      },
      f,
    )
  return d


def assert_same_as_transformers(ours, d, texts=LAYOUT_TEXTS, **kw):
  from transformers import AutoTokenizer, PreTrainedTokenizerFast

  for ref in (
    AutoTokenizer.from_pretrained(str(d), **kw),
    PreTrainedTokenizerFast.from_pretrained(str(d), **kw),
  ):
    for special in (True, False):
      want = [ref(t, add_special_tokens=special)["input_ids"] for t in texts]
      assert [ours.encode(t, special) for t in texts] == want, (d, special)
      assert ours.encode_batch(texts, special) == want
      assert ours.encode_batch(texts, special) == [
        ref.encode(t, add_special_tokens=special) for t in texts
      ]
  return ref


# (post-processor, tokenizer_config.json flags, adds bos, adds eos)
LAYOUTS = {
  "llama3_post_processor_only": ("bos", {}, True, False),
  "flag_only_no_post_processor": (None, {"add_bos_token": True}, False, False),
  "flag_only_smollm_bytelevel": ("bytelevel", {"add_bos_token": True}, False, False),
  "both_agree": ("bos", {"add_bos_token": True}, True, False),
  "flag_false_post_processor_adds": ("bos", {"add_bos_token": False}, True, False),
  "add_eos_token_flag_only": (None, {"add_eos_token": True}, False, False),
  "eos_post_processor_and_flag": ("eos", {"add_eos_token": True}, False, True),
  "bos_eos_post_processor": (
    "bos_eos",
    {"add_bos_token": True, "add_eos_token": True},
    True,
    True,
  ),
  "nothing": (None, {}, False, False),
  "smollm_bytelevel_no_flags": ("bytelevel", {"add_bos_token": False}, False, False),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_special_tokens_per_layout_match_transformers(layout, llama3_bpe, tmp_path):
  post, conf, adds_bos, adds_eos = LAYOUTS[layout]
  d = write_layout(tmp_path / layout, llama3_bpe, post, conf)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ours = Tokenizer.from_files(d)
  ref = assert_same_as_transformers(ours, d)
  assert (ours.add_bos_token, ours.add_eos_token) == (adds_bos, adds_eos)
  bos, eos = ref.convert_tokens_to_ids([BOS, EOS])
  assert (ours.bos_id, ours.eos_id) == (bos, eos)
  body = ours.encode("Hello world", add_special_tokens=False)
  assert ours.encode("Hello world") == ([bos] * adds_bos + body + [eos] * adds_eos)
  # A tokenizer_config.json flag that tokenizer.json does not honour is
  # reported (transformers ignores it silently).
  disagree = [
    f
    for f, adds in (("add_bos_token", adds_bos), ("add_eos_token", adds_eos))
    if f in conf and conf[f] != adds
  ]
  messages = [str(w.message) for w in caught]
  assert len(messages) == len(disagree), messages
  for flag, msg in zip(disagree, messages):
    assert flag in msg and "tokenizer_config.json" in msg


def test_llama3_layout_keeps_bos_for_chat_and_batches(llama3_bpe, tmp_path):
  """The issue's case: Llama-3 layout, bos from the post-processor only."""
  d = write_layout(tmp_path / "l3", llama3_bpe, "bos", {})
  ours = Tokenizer.from_files(d)
  bos = ours.token_to_id(BOS)
  assert ours.encode("Hello world")[0] == bos
  assert all(ids[0] == bos for ids in ours.encode_batch(TEXTS))
  # The chat template writes its own specials; nothing is added on top.
  t = Tokenizer(
    ours.backend,
    bos_token=BOS,
    chat_template="{{ bos_token }}{{ messages[0]['content'] }}",
  )
  assert t.apply_chat_template([{"role": "user", "content": "hi"}]) == [
    bos
  ] + ours.encode("hi", add_special_tokens=False)


def test_truncation_and_padding_in_tokenizer_json_are_ignored(llama3_bpe, tmp_path):
  d = write_layout(tmp_path / "tp", llama3_bpe, "bos", {}, truncate=True)
  ours = Tokenizer.from_files(d)
  assert_same_as_transformers(ours, d)
  assert len(ours.encode(TEXTS[0])) > 2


def test_chat_template_jinja_file_takes_priority(tiny, tmp_path):
  from transformers import AutoTokenizer

  _, _, ref = tiny
  ref.save_pretrained(str(tmp_path))
  conf = json.loads((tmp_path / "tokenizer_config.json").read_text())
  conf["chat_template"] = "from the config"
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(conf))
  (tmp_path / "chat_template.jinja").write_text("from the jinja file")
  want = AutoTokenizer.from_pretrained(str(tmp_path)).apply_chat_template(
    MESSAGES, tokenize=False
  )
  assert want == "from the jinja file"
  assert Tokenizer.from_files(tmp_path).render_chat(MESSAGES) == want


def test_constructor_flags_and_backend_untouched(llama3_bpe):
  from tokenizers import processors

  backend = tokenizers.Tokenizer.from_str(llama3_bpe.to_str())
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  bos, eos = backend.token_to_id(BOS), backend.token_to_id(EOS)
  body = backend.encode("Hello world", add_special_tokens=False).ids
  plain = Tokenizer(backend, bos_token=BOS, eos_token=EOS)
  assert plain.encode("Hello world") == body
  both = Tokenizer(
    backend, bos_token=BOS, eos_token=EOS, add_bos_token=True, add_eos_token=True
  )
  assert both.encode("Hello world") == [bos] + body + [eos]
  assert both.encode("Hello world", add_special_tokens=False) == body
  assert (both.add_bos_token, both.add_eos_token) == (True, True)
  only_eos = Tokenizer(backend, bos_token=BOS, eos_token=EOS, add_eos_token=True)
  assert only_eos.encode("Hello world") == body + [eos]
  # A flag without its token adds nothing (as transformers drops it).
  assert (
    Tokenizer(backend, eos_token=EOS, add_bos_token=True).encode("Hello world") == body
  )
  # The backend passed in is not modified.
  assert backend.encode("Hello world").ids == body
  assert isinstance(backend.post_processor, processors.ByteLevel)
  with pytest.raises(ValueError, match="add_bos_token must be a bool"):
    Tokenizer(backend, bos_token=BOS, add_bos_token="yes")


@pytest.mark.parametrize(
  "add_bos, add_eos",
  [
    (True, None),
    (False, None),
    (None, None),
    (True, True),
    (False, True),
    (None, True),
  ],
)
def test_gguf_flags_match_transformers(add_bos, add_eos, tmp_path):
  name = f"g_{add_bos}_{add_eos}.gguf"
  write_tokenizer_gguf(
    tmp_path / name, train_tiny_bpe(), add_bos=add_bos, add_eos=add_eos
  )
  ours = Tokenizer.from_gguf(tmp_path / name)
  assert_same_as_transformers(ours, tmp_path, texts=TEXTS, gguf_file=name)
  assert (ours.add_bos_token, ours.add_eos_token) == (bool(add_bos), bool(add_eos))


@pytest.mark.parametrize(
  "key, value, vtype, msg",
  [
    (
      "tokenizer.ggml.add_bos_token",
      "yes",
      gguf.GGUFValueType.STRING,
      "must be a bool, got str 'yes'",
    ),
    (
      "tokenizer.ggml.bos_token_id",
      "1",
      gguf.GGUFValueType.STRING,
      "must be an integer, got str '1'",
    ),
    (
      "tokenizer.ggml.bos_token_id",
      1.0,
      gguf.GGUFValueType.FLOAT32,
      "must be an integer, got float 1.0",
    ),
    (
      "tokenizer.ggml.bos_token_id",
      9999,
      gguf.GGUFValueType.UINT32,
      "bos_token_id=9999 out of range",
    ),
    (
      "tokenizer.ggml.model",
      2,
      gguf.GGUFValueType.UINT32,
      "must be a string, got int 2",
    ),
    (
      "tokenizer.ggml.pre",
      True,
      gguf.GGUFValueType.BOOL,
      "must be a string, got bool True",
    ),
    (
      "tokenizer.ggml.tokens",
      [1, 2, 3],
      gguf.GGUFValueType.ARRAY,
      "must be an array of strings, got list a 3-element array",
    ),
    (
      "tokenizer.ggml.merges",
      "a b",
      gguf.GGUFValueType.STRING,
      "must be an array of strings, got str 'a b'",
    ),
    (
      "tokenizer.ggml.token_type",
      ["1", "1"],
      gguf.GGUFValueType.ARRAY,
      "must be an array of integers",
    ),
    (
      "tokenizer.chat_template",
      7,
      gguf.GGUFValueType.INT32,
      "must be a string, got int 7",
    ),
  ],
)
def test_gguf_tokenizer_metadata_of_wrong_type(key, value, vtype, msg, tmp_path):
  write_tokenizer_gguf(
    tmp_path / "bad.gguf", train_tiny_bpe(), extra={key: (value, vtype)}
  )
  with pytest.raises(ValueError, match=r"bad\.gguf") as e:
    Tokenizer.from_gguf(tmp_path / "bad.gguf")
  assert key.split(".")[-1] in str(e.value) and msg in str(e.value)


@pytest.mark.parametrize(
  "field, value, msg",
  [
    ("add_bos_token", "true", "'add_bos_token' must be a bool or null"),
    ("add_eos_token", 1, "'add_eos_token' must be a bool or null"),
    ("bos_token", 5, "'bos_token' must be a string"),
    ("eos_token", {"content": None}, "'eos_token' must be a string"),
    ("chat_template", {"x": 1}, "'chat_template' must be a string"),
    (
      "chat_template",
      [{"name": "default"}],
      "'chat_template' must be a string or a list of",
    ),
    ("pad_token", "<nope>", "pad_token '<nope>' is not in the vocabulary"),
  ],
)
def test_tokenizer_config_fields_of_wrong_type(field, value, msg, llama3_bpe, tmp_path):
  d = write_layout(tmp_path / "bad", llama3_bpe, "bos", {field: value})
  with pytest.raises(ValueError, match="tokenizer_config.json") as e:
    Tokenizer.from_files(d)
  assert msg in str(e.value)
  (d / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(
    ValueError,
    match=r"tokenizer_config\.json.*not valid "
    "JSON",
  ):
    Tokenizer.from_files(d)
