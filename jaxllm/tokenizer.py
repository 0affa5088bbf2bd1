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

Special tokens added by `encode(text, add_special_tokens=True)` follow
transformers' fast tokenizers (PreTrainedTokenizerFast / TokenizersBackend,
checked against transformers 5.x): with a tokenizer.json, its post-processor
alone decides (Llama-3's TemplateProcessing prepends <|begin_of_text|>; a
ByteLevel or absent post-processor adds nothing); `add_bos_token` /
`add_eos_token` in tokenizer_config.json are ignored, as transformers ignores
them, with a warning when they disagree with the post-processor. From a GGUF
(no tokenizer.json), `tokenizer.ggml.add_bos_token` / `add_eos_token`, when
present, build the post-processor (bos before, eos after the text).

The chat template is rendered the way transformers renders it (sandboxed
jinja2, trim_blocks and lstrip_blocks, `raise_exception`, a non-escaping
`tojson`, the special tokens as strings in the context) and the result is
encoded without adding any further special tokens.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import warnings
from typing import Any, Optional, Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 2, 3, 4

# Pre-tokenizer split regexes by tokenizer.ggml.pre. None: the GPT-2 regex
# built into tokenizers' ByteLevel pre-tokenizer. Vocabularies not listed
# raise rather than silently splitting text the wrong way.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {
  "default": None,
  "gpt2": None,
  "smollm": None,
  "gpt-2": None,
  "llama3": _LLAMA3_SPLIT,
  "llama-v3": _LLAMA3_SPLIT,
  "llama-bpe": _LLAMA3_SPLIT,
  "smaug-bpe": _LLAMA3_SPLIT,
  "qwen2": _QWEN2_SPLIT,
  "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table.

  Printable Latin-1 bytes map to themselves; the other 68 bytes map, in
  increasing byte order, to U+0100, U+0101, ...
  """
  keep = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
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

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
      x,
      ensure_ascii=ensure_ascii,
      indent=indent,
      separators=separators,
      sort_keys=sort_keys,
    )

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
  )
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(source)


def bos_eos_post_processor(
  bos: Optional[tuple[str, int]], eos: Optional[tuple[str, int]]
) -> processors.TemplateProcessing:
  """The post-processor transformers builds from add_bos_token/add_eos_token.

  `bos` / `eos`: (token, id) to add before / after the text, or None for
  none. Same templates as transformers' `update_post_processor`: single
  `bos $A eos`, pair `bos $A eos bos $B eos`.
  """
  b = f"{bos[0]}:0 " if bos else ""
  e = f" {eos[0]}:0" if eos else ""
  single = f"{b}$A:0{e}"
  pair = (
    f"{single}{(' ' + bos[0] + ':1') if bos else ''} $B:1"
    f"{(' ' + eos[0] + ':1') if eos else ''}"
  )
  special = [t for t in (bos, eos) if t]
  return processors.TemplateProcessing(
    single=single, pair=pair, special_tokens=list(dict.fromkeys(special))
  )


# ---- Tokenizer.from_files' steps ----


def _load_backend(path) -> tuple[tokenizers.Tokenizer, str, str]:
  """(backend, tokenizer.json path, its folder) from a directory or the path of
  a tokenizer.json, without the truncation / padding a tokenizer.json may carry
  (transformers encodes without them unless asked). Raises ValueError for a
  missing or unparsable file."""
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
  backend.no_truncation()
  backend.no_padding()
  return backend, tok_json, folder


def _read_tokenizer_config(conf_path: str) -> dict:
  """tokenizer_config.json as a dict ({} when absent). Raises ValueError when
  it is not a JSON object."""
  if not os.path.isfile(conf_path):
    return {}
  try:
    with open(conf_path, encoding="utf-8") as f:
      conf = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{conf_path!r} is not valid JSON: {e}") from e
  if not isinstance(conf, dict):
    raise ValueError(  # noqa: TRY004 (ValueError, as documented)
      f"{conf_path!r}: expected a JSON object, got {type(conf).__name__}"
    )
  return conf


def _bad_field(conf_path: str, conf: dict, field: str, want: str) -> ValueError:
  return ValueError(
    f"{conf_path!r}: field {field!r} must be {want}, got {conf[field]!r}"
  )


def _chat_template(folder: str, conf: dict, conf_path: str) -> str | None:
  """The chat template: chat_template.jinja if present (it takes priority, as
  in transformers), else tokenizer_config.json's `chat_template` (the
  "default" of a named list). Raises ValueError for a field of the wrong
  type."""
  jinja_path = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      return f.read()
  template = conf.get("chat_template")
  if isinstance(template, list):  # named templates: take "default"
    if not all(
      isinstance(t, dict)
      and isinstance(t.get("name"), str)
      and isinstance(t.get("template"), str)
      for t in template
    ):
      raise _bad_field(
        conf_path,
        conf,
        "chat_template",
        "a string or a list of {'name': str, 'template': str}",
      )
    return {t["name"]: t["template"] for t in template}.get("default")
  if template is not None and not isinstance(template, str):
    raise _bad_field(
      conf_path, conf, "chat_template", "a string or a list of named templates"
    )
  return template


def _special_tokens(conf: dict, conf_path: str) -> dict:
  """{bos_token, eos_token, pad_token, unk_token: str or None} of
  tokenizer_config.json (an AddedToken dict gives its content), after checking
  add_bos_token / add_eos_token are bools or null. Raises ValueError for a
  field of the wrong type."""

  def tok(name):
    v = conf.get(name)
    if isinstance(v, dict):
      # an AddedToken dict: its string content, else a type error below
      v = v["content"] if isinstance(v.get("content"), str) else v
    if v is not None and not isinstance(v, str):
      raise _bad_field(
        conf_path,
        conf,
        name,
        "a string, an AddedToken dict with a string 'content', or null",
      )
    return v

  for flag in ("add_bos_token", "add_eos_token"):
    if conf.get(flag) is not None and not isinstance(conf[flag], bool):
      raise _bad_field(conf_path, conf, flag, "a bool or null")
  return {
    name: tok(name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")
  }


class Tokenizer:
  """Text <-> token ids, special token ids and chat template of one model."""

  def __init__(
    self,
    backend: tokenizers.Tokenizer,
    *,
    bos_token: Optional[str] = None,
    eos_token: Optional[str] = None,
    pad_token: Optional[str] = None,
    unk_token: Optional[str] = None,
    chat_template: Optional[str] = None,
    add_bos_token: Optional[bool] = None,
    add_eos_token: Optional[bool] = None,
  ):
    """Wrap `backend` with the model's special tokens and chat template.

    `add_bos_token` / `add_eos_token`: None (both, the default) keeps the
    backend's post-processor, so `encode` adds exactly the special tokens
    it adds, as PreTrainedTokenizerFast does with a tokenizer.json. Either
    one set replaces the post-processor by transformers' bos/eos template
    (the unset one counts as False; a flag without its token is dropped).
    Truncation and padding configured in the backend are switched off
    (transformers does the same when encoding without them). The backend
    passed in is copied before any change, never modified.

    Raises:
      ValueError: a special token that is not in the vocabulary, or a flag
        that is not a bool or None.
    """
    if not isinstance(backend, tokenizers.Tokenizer):
      raise ValueError(
        f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}"
      )
    for name, flag in (
      ("add_bos_token", add_bos_token),
      ("add_eos_token", add_eos_token),
    ):
      if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"{name} must be a bool or None, got {flag!r}")
    self.special_tokens = {}
    for name, tok in (
      ("bos_token", bos_token),
      ("eos_token", eos_token),
      ("pad_token", pad_token),
      ("unk_token", unk_token),
    ):
      if tok is None:
        continue
      if backend.token_to_id(tok) is None:
        raise ValueError(f"{name} {tok!r} is not in the vocabulary")
      self.special_tokens[name] = tok
    self.chat_template = chat_template
    explicit = add_bos_token is not None or add_eos_token is not None
    if explicit or backend.truncation is not None or backend.padding is not None:
      backend = copy.deepcopy(backend)
      backend.no_truncation()
      backend.no_padding()
    if explicit:
      backend.post_processor = bos_eos_post_processor(
        (bos_token, backend.token_to_id(bos_token))
        if add_bos_token and bos_token is not None
        else None,
        (eos_token, backend.token_to_id(eos_token))
        if add_eos_token and eos_token is not None
        else None,
      )
    self.backend = backend

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

  @functools.cached_property
  def special_affixes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before, ids after) the text that `encode(..., True)` adds.

    Found by encoding a short probe with and without special tokens, so it
    reflects whatever post-processor the backend has. ((), ()) if the
    backend encodes none of the probes to any token.
    """
    for probe in ("a", "0", "x", ".", " "):
      bare = self.backend.encode(probe, add_special_tokens=False).ids
      if not bare:
        continue
      full = self.backend.encode(probe, add_special_tokens=True).ids
      for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
          return tuple(full[:k]), tuple(full[k + len(bare) :])
    return (), ()

  @property
  def add_bos_token(self) -> bool:
    """Whether `encode(text)` starts with the bos token."""
    return self.bos_id is not None and self.bos_id in self.special_affixes[0]

  @property
  def add_eos_token(self) -> bool:
    """Whether `encode(text)` ends with the eos token."""
    return self.eos_id is not None and self.eos_id in self.special_affixes[1]

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> Optional[int]:
    return self.backend.token_to_id(token)

  def id_to_token(self, i: int) -> Optional[str]:
    return self.backend.id_to_token(int(i))

  # ---- encode / decode ----
  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`, as transformers' `tok(text)["input_ids"]`.

    With add_special_tokens, the special tokens the post-processor adds (see
    the module doc: e.g. <|begin_of_text|> for Llama-3, none for SmolLM2).
    Special-token text in `text` (e.g. '<|im_start|>') maps to its single id.

    Raises:
      ValueError: `text` is not a str.
    """
    if not isinstance(text, str):
      raise ValueError(f"encode expects a str, got {type(text).__name__}")
    return self.backend.encode(text, add_special_tokens=bool(add_special_tokens)).ids

  def encode_batch(
    self, texts: Sequence[str], add_special_tokens: bool = True
  ) -> list[list[int]]:
    """`[encode(t, add_special_tokens) for t in texts]`, encoded in parallel.

    Raises:
      ValueError: an element of `texts` is not a str.
    """
    texts = list(texts)
    for t in texts:
      if not isinstance(t, str):
        raise ValueError(f"encode_batch expects strs, got {type(t).__name__}")
    return [
      e.ids
      for e in self.backend.encode_batch(
        texts, add_special_tokens=bool(add_special_tokens)
      )
    ]

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    ids = [int(i) for i in ids]
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  # ---- chat ----
  def render_chat(
    self, messages: Sequence[dict], add_generation_prompt=True, **kwargs
  ) -> str:
    """The chat template applied to `messages`, as text."""
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat template")
    for m in messages:
      if not isinstance(m, dict):
        raise ValueError(f"chat messages must be dicts, got {m!r}")
    context = {**self.special_tokens, **kwargs}
    return _compile_template(self.chat_template).render(
      messages=list(messages), add_generation_prompt=add_generation_prompt, **context
    )

  def apply_chat_template(
    self,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    tokenize: bool = True,
    **kwargs,
  ):
    """Render the chat template and (by default) encode it without adding
    extra special tokens (the template writes its own)."""
    text = self.render_chat(messages, add_generation_prompt, **kwargs)
    return self.encode(text, add_special_tokens=False) if tokenize else text

  # ---- constructors ----
  @classmethod
  def from_files(cls, path: str) -> "Tokenizer":
    """From a directory with tokenizer.json (+ tokenizer_config.json,
    chat_template.jinja) or from the path of a tokenizer.json.

    As transformers' `AutoTokenizer.from_pretrained(dir)` with a
    tokenizer.json: special tokens come from tokenizer_config.json, the chat
    template from chat_template.jinja if present, else from
    tokenizer_config.json's `chat_template` ("default" of a named list);
    the special tokens `encode` adds come from tokenizer.json's
    post-processor only (tokenizer_config.json's add_bos_token /
    add_eos_token are ignored, with a warning where they disagree).

    Raises:
      ValueError: naming the file (and the field), for a missing or
        unparsable tokenizer.json, an unparsable tokenizer_config.json, a
        field of the wrong type, or a special token not in the vocabulary.
    """
    backend, tok_json, folder = _load_backend(path)
    conf_path = os.path.join(folder, "tokenizer_config.json")
    conf = _read_tokenizer_config(conf_path)
    template = _chat_template(folder, conf, conf_path)
    specials = _special_tokens(conf, conf_path)
    try:
      out = cls(backend, chat_template=template, **specials)
    except ValueError as e:
      raise ValueError(f"{conf_path!r}: {e}") from e
    for flag, adds in (
      ("add_bos_token", out.add_bos_token),
      ("add_eos_token", out.add_eos_token),
    ):
      if conf.get(flag) is not None and conf[flag] != adds:
        warnings.warn(
          f"{conf_path}: {flag}={conf[flag]} but the post-processor of "
          f"{tok_json} {'adds' if adds else 'does not add'} that token; "
          "encode follows tokenizer.json, as transformers does",
          stacklevel=2,
        )
    return out

  @classmethod
  def from_gguf(cls, path) -> "Tokenizer":
    """From a GGUF file's tokenizer metadata (byte-level BPE only); `path`
    may also be an open `gguf_io.GGUFFile`.

    As transformers' GGUF loader: `tokenizer.ggml.add_bos_token` /
    `add_eos_token`, when present, decide whether `encode` adds bos / eos;
    when both are absent it adds nothing.

    Raises:
      ValueError: naming the file and the metadata key, for a missing key,
        a value of the wrong type, an out-of-range special token id, or an
        unsupported tokenizer model or pre-tokenizer.
    """
    from jaxllm import gguf_io

    f = path if isinstance(path, gguf_io.GGUFFile) else gguf_io.open_gguf(path)
    path, meta = f.path, f.metadata

    def get(key, kind, default=None, required=False):
      return gguf_io.metadata_value(
        meta, key, path, kind, default=default, required=required
      )

    kind = get("tokenizer.ggml.model", "str", required=True)
    if kind != "gpt2":
      raise ValueError(
        f"{path!r}: tokenizer.ggml.model={kind!r} is not "
        "supported (only 'gpt2' byte-level BPE)"
      )
    pre = get("tokenizer.ggml.pre", "str", "default")
    if pre not in GGUF_PRE_SPLITS:
      raise ValueError(
        f"{path!r}: unknown tokenizer.ggml.pre={pre!r}; known: "
        f"{sorted(GGUF_PRE_SPLITS)}"
      )
    tokens = get("tokenizer.ggml.tokens", "str_list", required=True)
    merges = get("tokenizer.ggml.merges", "str_list", required=True)
    types = get("tokenizer.ggml.token_type", "int_list") or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
      raise ValueError(f"{path!r}: {len(types)} token types for {len(tokens)} tokens")
    template = get("tokenizer.chat_template", "str")
    add_bos = get("tokenizer.ggml.add_bos_token", "bool")
    add_eos = get("tokenizer.ggml.add_eos_token", "bool")

    def special(key):
      i = get(f"tokenizer.ggml.{key}", "int")
      if i is None:
        return None
      if not 0 <= i < len(tokens):
        raise ValueError(
          f"{path!r}: tokenizer.ggml.{key}={i} out of range "
          f"(the vocabulary has {len(tokens)} tokens)"
        )
      return i

    ids = {
      name: special(key)
      for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
      )
    }
    backend = build_byte_level_bpe(tokens, merges, types, GGUF_PRE_SPLITS[pre])
    names = {k: None if i is None else tokens[i] for k, i in ids.items()}
    if add_bos is not None or add_eos is not None:
      bos, eos = ids["bos_token"], ids["eos_token"]
      backend.post_processor = bos_eos_post_processor(
        (names["bos_token"], bos) if add_bos and bos is not None else None,
        (names["eos_token"], eos) if add_eos and eos is not None else None,
      )
    return cls(backend, chat_template=template, **names)


def build_byte_level_bpe(
  tokens: Sequence[str],
  merges: Sequence[str],
  token_types: Sequence[int],
  split_regex: Optional[str] = None,
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
  bpe = models.BPE(
    vocab=vocab,
    merges=pairs,
    continuing_subword_prefix="",
    end_of_word_suffix="",
    fuse_unk=False,
  )
  tok = tokenizers.Tokenizer(bpe)
  if split_regex is None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  tok.decoder = decoders.ByteLevel()
  control = [
    AddedToken(t, normalized=False, special=True)
    for t, ty in zip(tokens, token_types)
    if ty == TOKEN_CONTROL and set(t) <= alphabet
  ]
  if control:
    tok.add_special_tokens(control)
  user = [
    AddedToken(t, normalized=False, special=False)
    for t, ty in zip(tokens, token_types)
    if ty == TOKEN_USER_DEFINED and t in vocab
  ]
  if user:
    tok.add_tokens(user)
  return tok
