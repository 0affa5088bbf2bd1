"""Tokenizers and chat templates, built on the `tokenizers` library.

`Tokenizer` wraps a `tokenizers.Tokenizer` with the model's special tokens and
its jinja2 chat template. Two constructors:

* `Tokenizer.from_files(dir_or_tokenizer_json)`: a Hugging Face `tokenizer.json`
  plus `tokenizer_config.json` (special tokens, chat template; a separate
  `chat_template.jinja` is also read).
* `Tokenizer.from_gguf(path)`: rebuilt from GGUF metadata. Only llama.cpp's
  'gpt2' (byte-level BPE) vocabularies are supported; the result matches what
  transformers' GGUF converter builds: a BPE model over the file's tokens and
  merges, a ByteLevel pre-tokenizer (GPT-2 split regex, no prefix space) or a
  Split by the vocabulary's own regex followed by ByteLevel, a ByteLevel
  decoder, CONTROL tokens added as special tokens and USER_DEFINED tokens as
  plain added tokens.

The chat template is rendered the way transformers renders it (sandboxed
jinja2, trim_blocks and lstrip_blocks, `raise_exception`, a non-escaping
`tojson`, the special tokens as strings in the context) and the result is
encoded without adding any further special tokens.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from typing import Any, Optional, Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 2, 3, 4

# Pre-tokenizer split regexes by tokenizer.ggml.pre. None: the GPT-2 regex
# built into tokenizers' ByteLevel pre-tokenizer. Vocabularies not listed
# raise rather than silently splitting text the wrong way.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_SPLITS = {
    "default": None, "gpt2": None, "smollm": None, "gpt-2": None,
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table.

  Printable Latin-1 bytes map to themselves; the other 68 bytes map, in
  increasing byte order, to U+0100, U+0101, ...
  """
  keep = (list(range(ord("!"), ord("~") + 1)) +
          list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


@functools.lru_cache(maxsize=64)
def _compile_template(source: str):
  import jinja2
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None,
             sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(source)


class Tokenizer:
  """Text <-> token ids, special token ids and chat template of one model."""

  def __init__(self, backend: tokenizers.Tokenizer, *,
               bos_token: Optional[str] = None,
               eos_token: Optional[str] = None,
               pad_token: Optional[str] = None,
               unk_token: Optional[str] = None,
               chat_template: Optional[str] = None,
               add_bos_token: bool = False,
               add_eos_token: bool = False):
    self.backend = backend
    self.special_tokens = {}
    for name, tok in (("bos_token", bos_token), ("eos_token", eos_token),
                      ("pad_token", pad_token), ("unk_token", unk_token)):
      if tok is None:
        continue
      if backend.token_to_id(tok) is None:
        raise ValueError(f"{name} {tok!r} is not in the vocabulary")
      self.special_tokens[name] = tok
    self.chat_template = chat_template
    self.add_bos_token = add_bos_token and bos_token is not None
    self.add_eos_token = add_eos_token and eos_token is not None

  # ---- special tokens ----
  def _id(self, name) -> Optional[int]:
    tok = self.special_tokens.get(name)
    return None if tok is None else self.backend.token_to_id(tok)

  bos_token = property(lambda self: self.special_tokens.get("bos_token"))
  eos_token = property(lambda self: self.special_tokens.get("eos_token"))
  pad_token = property(lambda self: self.special_tokens.get("pad_token"))
  bos_id = property(lambda self: self._id("bos_token"))
  eos_id = property(lambda self: self._id("eos_token"))
  pad_id = property(lambda self: self._id("pad_token"))
  unk_id = property(lambda self: self._id("unk_token"))

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> Optional[int]:
    return self.backend.token_to_id(token)

  def id_to_token(self, i: int) -> Optional[str]:
    return self.backend.id_to_token(int(i))

  # ---- encode / decode ----
  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`; with add_special_tokens, the bos/eos the model's
    config asks for (none for SmolLM2). Special-token text in `text` (e.g.
    '<|im_start|>') maps to its single id."""
    if not isinstance(text, str):
      raise ValueError(f"encode expects a str, got {type(text).__name__}")
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if add_special_tokens:
      if self.add_bos_token:
        ids = [self.bos_id] + ids
      if self.add_eos_token:
        ids = ids + [self.eos_id]
    return ids

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = True) -> list[list[int]]:
    if not add_special_tokens or not (self.add_bos_token or
                                      self.add_eos_token):
      return [e.ids for e in self.backend.encode_batch(
          list(texts), add_special_tokens=False)]
    return [self.encode(t, add_special_tokens) for t in texts]

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    ids = [int(i) for i in ids]
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  # ---- chat ----
  def render_chat(self, messages: Sequence[dict], add_generation_prompt=True,
                  **kwargs) -> str:
    """The chat template applied to `messages`, as text."""
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat template")
    for m in messages:
      if not isinstance(m, dict):
        raise ValueError(f"chat messages must be dicts, got {m!r}")
    context = {**self.special_tokens, **kwargs}
    return _compile_template(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **context)

  def apply_chat_template(self, messages: Sequence[dict],
                          add_generation_prompt: bool = True,
                          tokenize: bool = True, **kwargs):
    """Render the chat template and (by default) encode it without adding
    extra special tokens (the template writes its own)."""
    text = self.render_chat(messages, add_generation_prompt, **kwargs)
    return self.encode(text, add_special_tokens=False) if tokenize else text

  # ---- constructors ----
  @classmethod
  def from_files(cls, path: str) -> "Tokenizer":
    """From a directory with tokenizer.json (+ tokenizer_config.json,
    chat_template.jinja) or from the path of a tokenizer.json."""
    path = os.fspath(path)
    if os.path.isdir(path):
      tok_json, folder = os.path.join(path, "tokenizer.json"), path
    else:
      tok_json, folder = path, os.path.dirname(path)
    if not os.path.isfile(tok_json):
      raise ValueError(f"tokenizer file {tok_json!r} does not exist")
    try:
      backend = tokenizers.Tokenizer.from_file(tok_json)
    except Exception as e:
      raise ValueError(f"cannot parse tokenizer file {tok_json!r}: {e}") from e
    conf = {}
    conf_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(conf_path):
      with open(conf_path, encoding="utf-8") as f:
        conf = json.load(f)
    template = conf.get("chat_template")
    jinja_path = os.path.join(folder, "chat_template.jinja")
    if template is None and os.path.isfile(jinja_path):
      with open(jinja_path, encoding="utf-8") as f:
        template = f.read()
    if isinstance(template, list):  # named templates: take "default"
      named = {t["name"]: t["template"] for t in template}
      template = named.get("default")

    def tok(name):
      v = conf.get(name)
      return v.get("content") if isinstance(v, dict) else v

    return cls(backend, bos_token=tok("bos_token"), eos_token=tok("eos_token"),
               pad_token=tok("pad_token"), unk_token=tok("unk_token"),
               chat_template=template,
               add_bos_token=bool(conf.get("add_bos_token", False)),
               add_eos_token=bool(conf.get("add_eos_token", False)))

  @classmethod
  def from_gguf(cls, path) -> "Tokenizer":
    """From a GGUF file's tokenizer metadata (byte-level BPE only); `path`
    may also be an open `gguf_io.GGUFFile`."""
    from jaxllm import gguf_io

    f = path if isinstance(path, gguf_io.GGUFFile) else gguf_io.open_gguf(path)
    path, meta = f.path, f.metadata

    def get(key, default=None, required=False):
      if key in meta:
        return meta[key]
      if required:
        raise ValueError(f"{path!r}: missing GGUF metadata key {key!r}")
      return default

    kind = get("tokenizer.ggml.model", required=True)
    if kind != "gpt2":
      raise ValueError(f"{path!r}: tokenizer.ggml.model={kind!r} is not "
                       "supported (only 'gpt2' byte-level BPE)")
    pre = get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_SPLITS:
      raise ValueError(f"{path!r}: unknown tokenizer.ggml.pre={pre!r}; known: "
                       f"{sorted(GGUF_PRE_SPLITS)}")
    tokens = get("tokenizer.ggml.tokens", required=True)
    merges = get("tokenizer.ggml.merges", required=True)
    types = get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
      raise ValueError(f"{path!r}: {len(types)} token types for "
                       f"{len(tokens)} tokens")
    backend = build_byte_level_bpe(tokens, merges, types, GGUF_PRE_SPLITS[pre])

    def special(key):
      i = get(f"tokenizer.ggml.{key}")
      if i is None:
        return None
      if not 0 <= int(i) < len(tokens):
        raise ValueError(f"{path!r}: tokenizer.ggml.{key}={i} out of range")
      return tokens[int(i)]

    return cls(backend, bos_token=special("bos_token_id"),
               eos_token=special("eos_token_id"),
               pad_token=special("padding_token_id"),
               unk_token=special("unknown_token_id"),
               chat_template=get("tokenizer.chat_template"),
               add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)),
               add_eos_token=bool(get("tokenizer.ggml.add_eos_token", False)))


def build_byte_level_bpe(tokens: Sequence[str], merges: Sequence[str],
                         token_types: Sequence[int],
                         split_regex: Optional[str] = None
                         ) -> tokenizers.Tokenizer:
  """A byte-level BPE `tokenizers.Tokenizer` from llama.cpp vocab arrays.

  Tokens are normally already spelled in GPT-2's byte alphabet; any that are
  not (e.g. raw special strings with other characters) are respelled from
  their UTF-8 bytes so the vocabulary stays consistent.
  """
  spell = byte_to_unicode()
  alphabet = set(spell.values())
  vocab = {}
  for i, t in enumerate(tokens):
    key = t if set(t) <= alphabet else "".join(spell[b] for b in t.encode())
    vocab[key] = i
  pairs = []
  for m in merges:
    parts = m.split(" ")
    if len(parts) != 2:
      raise ValueError(f"malformed BPE merge {m!r}")
    pairs.append((parts[0], parts[1]))
  bpe = models.BPE(vocab=vocab, merges=pairs, continuing_subword_prefix="",
                   end_of_word_suffix="", fuse_unk=False)
  tok = tokenizers.Tokenizer(bpe)
  if split_regex is None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                 use_regex=True)
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, normalized=False, special=True)
             for t, ty in zip(tokens, token_types)
             if ty == TOKEN_CONTROL and set(t) <= alphabet]
  if control:
    tok.add_special_tokens(control)
  user = [AddedToken(t, normalized=False, special=False)
          for t, ty in zip(tokens, token_types)
          if ty == TOKEN_USER_DEFINED and t in vocab]
  if user:
    tok.add_tokens(user)
  return tok
