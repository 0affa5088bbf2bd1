"""Final-answer extraction and comparison for GSM8K-style free text.

`extract_answer(text)` finds the final answer span, in this priority order:
  1. the last `\\boxed{...}` (nested braces allowed; `\\fbox{}` too),
  2. the last `#### ...` line (GSM8K's reference format),
  3. the last "answer is ..." / "answer: ..." (case-insensitive, e.g. "The final
     answer is $18."; "answer isn't" and "answer is not" are not marked answers),
  4. only if `fallback_last_number=True` (lm-eval's "flexible-extract"): the last
     number anywhere in the text,
and returns the first number in that span, normalised by `normalize_answer`. A
span with no number at all passes to the next format; a span whose first number
cannot be read exactly (`\\sqrt{2}`, `2\\pi`, `3 \\times 4`, `3 * 4`, `5 + 3`,
`5 ÷ 2`, `\\frac{x}{2}`, `\\frac{3}{0}`) makes the answer None: unparsable, for
the caller to count (it is never replaced by a digit read from inside the
expression, nor by a number from a lower-priority format). `extraction(text)` also says which format
answered or why there is none.

Numbers are read exactly (as a Fraction), in plain text and in the LaTeX forms
models write, matching Math-Verify (PyPI `math-verify`, the reference in
tests/test_tasks.py) on each:
  `5`, `5.0`, `$5.00`, `5 dollars`, `\\$5`, `\\text{5 dollars}`, `\\mathbf{5}`
      (currency, units, `\\text{...}`, `\\(...\\)` and `$...$` are dropped),
  `1,234`, `1{,}234`, `1\\,234` (thousands separators; `1,2` is 1),
  `-3.5`, `.5`, `−3` (Unicode minus), `-\\$5`, `\\$-5`,
  `3/4`, `\\frac{3}{4}`, `\\dfrac`, `\\tfrac`, `\\cfrac`, `\\frac34` / `\\frac 3 4`
      (single-token arguments), `\\frac{-3}{4}`, `-\\frac{3}{4}`, `\\frac{1.5}{2}`,
  `2\\frac{1}{2}`, `2 \\frac12` and `2 1/2` (mixed numbers: 5/2; `-2\\frac12` is
      -5/2; a plain-text one only with a proper fraction: `3 5/4` is unparsable),
  `2⁄3` (U+2044 fraction slash, as `/`),
  `\\left( \\frac{3}{4} \\right)`, `\\displaystyle`,
  `75\\%` and `75%` (the number of percent, 75: GSM8K answers are written so),
  `1.5 \\times 10^{3}`, `3\\cdot10^4`, `10^{-2}`, `2^{10}`, `10**3`, `1.2E3` /
      `2.5e3`,
  `42^\\circ`.
Where this deliberately differs from Math-Verify: a percent is its number (75,
not 3/4), `1\\,000` is 1000 (Math-Verify reads 1*0), `2.5e3` is 2500 (Math-Verify
reads e as Euler's number), `1,2` is 1 (Math-Verify: the set {1, 2}), a product
`3 \\times 4` (or `3 × 4`, `3 * 4`, `5 + 3`, `5 ÷ 2`; an operator followed by an
operand) is unparsable (Math-Verify: 12), and letters after a number are a
unit (`2x` is 2; Math-Verify: 2*x). A wrapper cut off before its closing
brace (`\\boxed{7` at the end of a truncated generation) is no marked answer,
but its contents count for the last number.

The canonical string is an integer ("1200"), a terminating decimal ("-3.5") or a
reduced ratio ("1/3").

Reported rules (RULES): "strict" is formats 1-3 only, "flexible" adds 4.
`grade(text, gold, rule)` gives one completion's outcome (correct / wrong /
unparsable, with the extraction saying why), `tally(completions, golds)` the
counts under both rules, every completion counted (none dropped);
`answer_id_fn(decode, rule)` the answer ids self-consistency votes on.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np

# ---------------------------------------------------------------------------
# LaTeX clean-up: what carries no value becomes a space (or nothing, for the
# thin spaces inside a number), so only numbers and value-bearing macros stay.

# Macros whose one argument is their value: \text{5} is 5.
_WRAPPERS = (
  "text|textbf|textit|textrm|textsf|texttt|textnormal|textup|mathrm|"
  "mathbf|mathit|mathsf|mathtt|mathnormal|boldsymbol|bm|mbox|hbox|"
  "operatorname|boxed|fbox|underline|emph|ensuremath"
)
_UNWRAP = re.compile(
  rf"\\(?:{_WRAPPERS}|(?:text)?color\{{[^{{}}]*\}})\s*\{{([^{{}}]*)\}}"
)
# A wrapper left after unwrapping (nested or cut-off braces: `\boxed{7` at the
# end of a truncated generation) is transparent: its contents are read.
_WRAPPER_OPEN = re.compile(rf"\\(?:{_WRAPPERS})(?![A-Za-z])\s*\{{?")
_BLANKS = [  # (pattern, replacement), applied in order
  (re.compile(r"\\(?:begin|end|label|tag|[hv]space\*?)\s*\{[^{}]*\}"), " "),
  (re.compile("\u2212"), "-"),  # Unicode minus
  (re.compile(r"\{,\}"), ","),
  (re.compile(r"\\[,!]"), ""),  # thin / negative spaces: 1\,000 is 1000
  (re.compile(r"\\(?:[dtc]frac)(?![A-Za-z])"), r"\\frac"),
  (
    re.compile(
      r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\u00b0|"
      r"\\degree(?![A-Za-z])"
    ),
    " ",
  ),
  (
    re.compile(
      r"\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle|"
      r"scriptstyle|bf|it|rm|sf|tt|mathrm|limits|nolimits|"
      r"quad|qquad|enspace|thinspace|medspace|thickspace|"
      r"approx|sim|simeq|equiv|cong|leq?|geq?|lt|gt|neq?|to|"
      r"rightarrow|Rightarrow|implies|therefore|newline|"
      r"textdollar|euro|pounds|yen|dollar|percent|[lc]?dots|"
      r"hfill|hline|par|item|noindent|nonumber|notag)(?![A-Za-z])"
    ),
    " ",
  ),
  (re.compile(r"\\[$%;:() \[\]]|\\\\|[$%~\u20ac\u00a3\u00a5]"), " "),
  (re.compile(r"_\s*(?:\{[^{}]*\}|[A-Za-z0-9])"), " "),  # subscripts: labels
]


def _clean(span: str) -> str:
  """`span` with LaTeX markup that carries no value replaced by spaces."""
  prev = None
  while prev != span:  # unwrap \text{..} etc., innermost first
    prev, span = span, _UNWRAP.sub(r" \1 ", span)
  for pattern, repl in _BLANKS:
    span = pattern.sub(repl, span)
  return span


# ---------------------------------------------------------------------------
# Reading numbers from cleaned text.

_DEC = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGNED_DEC = re.compile(rf"\s*(-?)\s*({_DEC})\s*")
_START = re.compile(
  r"(?P<macro>\\[A-Za-z]+)|(?P<caret>\^)|"
  r"(?<![\w.)}\]])(?P<sign>-)(?=[\s({]*(?:\d|\.\d|\\frac(?![A-Za-z])))|"
  rf"(?<![\w.])(?P<num>{_DEC})"
)
_WS = re.compile(r"\s*")
_INT_EXP = re.compile(
  r"\s*(?:\^\s*(?:\{\s*(-?\d+)\s*\}|(\d))|\*\*\s*(-?\d+)(?!\w|\.\d))"
)
_SCI_TIMES = re.compile(
  r"\s*(?:\\times|\\cdot|[\u00d7\u00b7\u22c5*])\s*10\s*\^\s*"
  r"(?:\{\s*(-?\d+)\s*\}|(\d))"
)
_E_EXP = re.compile(r"[eE]([-+]?\d+)(?!\w|\.\d)")  # a trailing period ends it
_MAX_EXP = 1000  # 10^1000 is fine as a Fraction; 10^(10^9) would not be
# A macro whose value we cannot read, with its arguments: \sqrt[3]{x}, \pi.
_MACRO_ARGS = re.compile(r"\s*(?:\[[^\[\]]*\]\s*)?")
_TOKEN = re.compile(r"\\[A-Za-z]+|.", re.DOTALL)
_NUM = re.compile(_DEC)
_SIGN = re.compile(r"-[\s({]*")
_SLASH = "[/\u2044]"  # "/" or the fraction slash
_RATIO = re.compile(rf"\s*{_SLASH}\s*({_DEC})(?!\w|\.\d)")  # "3/4." is 3/4
# A plain-text mixed number's fraction: "1 1/2" (read only when proper).
_PLAIN_MIXED = re.compile(rf"[ \t]+(\d+)\s*{_SLASH}\s*(\d+)(?!\w|\.\d)")
# An arithmetic operator after a number, with an operand after it: the number
# is part of an expression (3 * 4, 5 + 3, 5 ÷ 2), which is unparsable. `*` and
# `+` need a numeric operand (`*5* apples` is Markdown, `18+` is not a sum);
# \times, \cdot and \div are macros, caught as glued on.
_OPERATOR = re.compile(
  r"\s*(?:[\u00d7\u00b7\u22c5\u00f7\u2044](?=\s*[-(]*\s*(?:\w|\.\d|\\))|"
  r"(?:\*\*?|\+)(?=\s*[-(]*\s*(?:\d|\.\d|\\[A-Za-z])))"
)
_GLUED = re.compile(r"\\[A-Za-z]+|\^")


def _skip_group(s: str, i: int) -> int:
  """End of the `{...}` group (balanced) or single token starting at s[i:]."""
  i = _WS.match(s, i).end()
  if i >= len(s):
    return i
  if s[i] != "{":
    return _TOKEN.match(s, i).end()
  depth = 0
  for j in range(i, len(s)):
    depth += {"{": 1, "}": -1}.get(s[j], 0)
    if depth == 0:
      return j + 1
  return len(s)


def _skip_macro(s: str, i: int, name: str) -> int:
  """End of an opaque macro starting at s[i:] and its braced arguments."""
  j = i + len(name)
  j = _MACRO_ARGS.match(s, j).end()
  while j < len(s) and s[j] == "{":
    j = _WS.match(s, _skip_group(s, j)).end()
  return j


def _frac_arg(s: str, i: int) -> tuple[Fraction | None, int]:
  """A \\frac argument at s[i:]: `{ -1,234.5 }` or one digit (`\\frac12`)."""
  i = _WS.match(s, i).end()
  if i < len(s) and s[i].isdigit():
    return Fraction(int(s[i])), i + 1
  end = _skip_group(s, i)
  if i >= len(s) or s[i] != "{":
    return None, end
  m = _SIGNED_DEC.fullmatch(s, i + 1, end - 1)
  if m is None:
    return None, end
  v = Fraction(m.group(2).replace(",", ""))
  return (-v if m.group(1) else v), end


def _read_frac(s: str, i: int) -> tuple[Fraction | None, int]:
  """\\frac{a}{b} starting at s[i:] (i at the backslash)."""
  a, j = _frac_arg(s, i + len("\\frac"))
  b, j = _frac_arg(s, j)
  if a is None or b is None or b == 0:
    return None, j
  return a / b, j


def _power(base: Fraction, exp_text: str) -> Fraction | None:
  e = int(exp_text)
  if abs(e) > _MAX_EXP or (base == 0 and e < 0):
    return None
  return base**e


def _read_plain(s: str, i: int) -> tuple[Fraction | None, int]:
  """A plain number at s[i:] (a digit or '.') with what completes it: a
  mixed number's fraction, an exponent or a ratio -> (value or None, end)."""
  m = _NUM.match(s, i)
  text = m.group(0)
  value, j = Fraction(text.replace(",", "")), m.end()
  whole = value if re.fullmatch(r"\d+", text) else None
  k = _WS.match(s, j).end()
  if whole is not None and s.startswith("\\frac", k):  # mixed number
    frac, j2 = _read_frac(s, k)
    if frac is None or frac < 0:
      return None, j2
    return whole + frac, j2
  if whole is not None and (m2 := _PLAIN_MIXED.match(s, j)):  # "1 1/2"
    num, den = int(m2.group(1)), int(m2.group(2))
    if 0 < num < den:
      return whole + Fraction(num, den), m2.end()
    return None, m2.end()  # "3 5/4": not a number form
  if m2 := _E_EXP.match(s, j) or _SCI_TIMES.match(s, j):
    p = _power(Fraction(10), next(g for g in m2.groups() if g is not None))
    return (None if p is None else value * p), m2.end()
  if m2 := _INT_EXP.match(s, j):  # 2^{10}, 2^3, 10**3
    return _power(value, next(g for g in m2.groups() if g is not None)), m2.end()
  if m2 := _RATIO.match(s, j):
    den = Fraction(m2.group(1).replace(",", ""))
    return (None if den == 0 else value / den), m2.end()
  return value, j


def _read_number(s: str, i: int) -> tuple[Fraction | None, int]:
  """The number expression starting at s[i:] (a sign, a digit, '.' or
  \\frac) -> (exact value or None if unreadable, end)."""
  negative = False
  if s[i] == "-":
    negative = True
    i = _SIGN.match(s, i).end()
  if s.startswith("\\frac", i):
    value, j = _read_frac(s, i)
  else:
    value, j = _read_plain(s, i)
  if value is not None and negative:
    value = -value
  # Something glued on that continues the expression: 5\sqrt{2}, 2\pi,
  # 3 \times 4, \frac12^2, \frac123, 2.5\frac12, x^{1/2}; or an operator
  # with an operand: 3 * 4, 5 + 3, 5 ÷ 2 (the operand is read on its own).
  k = _WS.match(s, j).end()
  glued = _GLUED.match(s, k)
  if glued or (j < len(s) and s[j].isdigit()):
    if glued and glued.group(0) == "^":
      return None, _skip_group(s, k + 1)
    if glued:
      return None, _skip_macro(s, k, glued.group(0))
    return None, j + 1
  if op := _OPERATOR.match(s, j):
    return None, op.end()
  return value, j


class _Item(NamedTuple):
  value: Fraction | None  # None: a value we cannot read exactly
  has_digit: bool  # an unreadable item that holds a digit is a number too


def _items(span: str) -> list[_Item]:
  """The numbers (readable or not) and opaque macros of `span`, in order."""
  s = _clean(span)
  out, pos = [], 0
  while (m := _START.search(s, pos)) is not None:
    if wrapper := _WRAPPER_OPEN.match(s, m.start()):  # cut off: transparent
      pos = wrapper.end()
    elif m.group("macro") and m.group("macro") != "\\frac":
      end = _skip_macro(s, m.start(), m.group("macro"))
      out.append(_Item(None, any(c.isdigit() for c in s[m.start() : end])))
      pos = end
    elif m.group("caret"):  # an exponent of a variable (x^2): not a number
      pos = _skip_group(s, m.end())
    else:
      value, pos = _read_number(s, m.start())
      out.append(_Item(value, True))
  return out


def parse_number(span: str | None) -> Fraction | None:
  """The first number in `span` as an exact Fraction, or None if there is none
  or it cannot be read exactly (see the module doc for the forms read)."""
  if span is None:
    return None
  items = _items(span)
  return items[0].value if items else None


def format_number(value: Fraction) -> str:
  """Canonical text of an exact number: "12", "-3.5", or "1/3" if not a finite decimal."""
  value = Fraction(value)
  if value.denominator == 1:
    return str(value.numerator)
  d = value.denominator
  k2 = k5 = 0
  while d % 2 == 0:
    d //= 2
    k2 += 1
  while d % 5 == 0:
    d //= 5
    k5 += 1
  if d != 1:
    return f"{value.numerator}/{value.denominator}"
  places = max(k2, k5)
  scaled = abs(value) * 10**places
  digits = str(scaled.numerator).rjust(places + 1, "0")
  sign = "-" if value < 0 else ""
  return f"{sign}{digits[:-places]}.{digits[-places:]}"


def normalize_answer(span: str | None) -> str | None:
  """Canonical string of the first number in `span` ("$1,200.00" -> "1200"), or None."""
  value = parse_number(span) if span is not None else None
  return None if value is None else format_number(value)


# ---------------------------------------------------------------------------
# Extraction.

_HASH_RE = re.compile(r"####\s*(?P<span>[^\n]*)")
# "answer is" / "answer:", not "answer isn't" or "answer is not".
_ANSWER_IS_RE = re.compile(
  r"\banswer\s*(?:is(?![\w'\u2019])(?!\s+not\b)|:)\s*:?\s*(?P<span>[^\n]*)",
  re.IGNORECASE,
)


def _boxed_spans(text: str) -> list[str]:
  """Contents of every \\boxed{...} / \\fbox{...}, with nested braces matched."""
  spans = []
  for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
    depth, i = 1, m.end()
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      spans.append(text[m.end() : i - 1])
  return spans


class Extraction(NamedTuple):
  """What `extraction` found.

  answer: the canonical number string, or None.
  source: where it came from: "boxed", "####", "answer is" or "last number";
    "unparsable: <format>" when that format's span starts with a value that
    cannot be read exactly (answer None); "none" when no format holds a number.
  """

  answer: str | None
  source: str


def extraction(text: str, fallback_last_number: bool = False) -> Extraction:
  """The final answer of a generated solution and where it came from (see the
  module doc for the order of formats).

  Raises:
    ValueError: `text` is not a str.
  """
  if not isinstance(text, str):
    raise ValueError(f"text must be a str, got {type(text).__name__}")
  candidates: list[tuple[str, str]] = []
  boxed = _boxed_spans(text)
  if boxed:
    candidates.append(("boxed", boxed[-1]))
  hashes = _HASH_RE.findall(text)
  if hashes:
    candidates.append(("####", hashes[-1]))
  said = _ANSWER_IS_RE.findall(text)
  if said:
    candidates.append(("answer is", said[-1]))
  for source, span in candidates:  # the highest-priority format with a number wins
    items = _items(span)
    if not items:
      continue
    if items[0].value is None:
      return Extraction(None, f"unparsable: {source}")
    return Extraction(format_number(items[0].value), source)
  if fallback_last_number:
    numbers = [it for it in _items(text) if it.has_digit]
    if numbers:
      if numbers[-1].value is None:
        return Extraction(None, "unparsable: last number")
      return Extraction(format_number(numbers[-1].value), "last number")
  return Extraction(None, "none")


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
  """Normalised final answer of a generated solution (see module doc), or None
  when there is none or it cannot be read (`extraction` says which)."""
  return extraction(text, fallback_last_number).answer


def answers_equal(a: str | None, b: str | None) -> bool:
  """True iff both are answers (strings with a number) of exactly the same value."""
  va = parse_number(a) if a is not None else None
  vb = parse_number(b) if b is not None else None
  return va is not None and vb is not None and va == vb


# ---------------------------------------------------------------------------
# The two reported rules and their counts.

# strict: a marked answer only (\boxed{}, `####`, "the answer is"; the prompt
#   asks for \boxed{}). flexible: the marked answer when there is one, else the
#   last number in the text (lm-eval's "flexible-extract" takes the last number
#   even when a marked answer exists; here a marked answer, readable or not, wins).
RULES = ("strict", "flexible")
OUTCOMES = ("correct", "wrong", "unparsable")


def extract(text: str, rule: str) -> Extraction:
  """`extraction(text)` under a named rule ("strict" or "flexible", see RULES).

  Raises:
    ValueError: an unknown rule, or `text` is not a str.
  """
  if rule not in RULES:
    raise ValueError(f"unknown extraction rule {rule!r}; expected one of {RULES}")
  return extraction(text, fallback_last_number=rule == "flexible")


def _gold_value(gold, where: str) -> Fraction:
  """The exact value of a gold answer: a number, or a str holding one
  (`where` names the argument in the error: "(gold)", "3 (golds[3])")."""
  value = None
  if isinstance(gold, str):
    value = parse_number(gold)
  elif isinstance(gold, bool):
    pass
  elif isinstance(gold, numbers.Rational):  # int, Fraction, numpy ints
    value = Fraction(gold)
  elif isinstance(gold, numbers.Real) and math.isfinite(gold):
    value = Fraction(repr(float(gold)))  # 0.1 is 1/10, as written
  if value is None:
    raise ValueError(
      f"gold answer {where} = {gold!r} holds no readable number; expected a "
      "number or a str such as '18'"
    )
  return value


class Grade(NamedTuple):
  """One completion under one rule: its extraction and outcome ("correct",
  "wrong" or "unparsable": no answer, `extraction.source` says why)."""

  extraction: Extraction
  outcome: str


def grade(text: str, gold: str | float | Fraction, rule: str) -> Grade:
  """The outcome of one completion against its gold answer under `rule`.

  Raises:
    ValueError: an unknown rule, `text` not a str, or a `gold` that is neither
      a number nor a str with a readable number (a bad gold must not be
      scored as the model's miss).
  """
  ex = extract(text, rule)
  want = _gold_value(gold, "(gold)")
  if ex.answer is None:
    return Grade(ex, "unparsable")
  return Grade(ex, "correct" if parse_number(ex.answer) == want else "wrong")


class Tally(NamedTuple):
  """Counts of one rule over a list of completions: correct + wrong +
  unparsable == total; `reasons` counts the unparsable ones by
  `Extraction.source` ("none", "unparsable: boxed", ...)."""

  correct: int
  wrong: int
  unparsable: int
  reasons: dict[str, int]

  @property
  def total(self) -> int:
    return self.correct + self.wrong + self.unparsable

  @property
  def accuracy(self) -> float:
    """correct / total, unparsable answers counted as misses (nan when empty)."""
    return self.correct / self.total if self.total else float("nan")


def _check_rules(rules) -> tuple[str, ...]:
  """`rules` as a tuple of known rules (a bare str is one rule)."""
  if isinstance(rules, str):
    rules = (rules,)
  try:
    rules = tuple(rules)
  except TypeError:
    raise ValueError(
      f"rules must be a rule name or a sequence of them (from {RULES}), got "
      f"{type(rules).__name__}"
    ) from None
  if not rules:
    raise ValueError(f"rules is empty; expected some of {RULES}")
  for rule in rules:
    if rule not in RULES:
      raise ValueError(
        f"unknown extraction rule {rule!r} in rules; expected one of {RULES}"
      )
  return rules


def tally(
  completions: Sequence[str],
  golds: Sequence[str | float | Fraction],
  rules: str | Sequence[str] = RULES,
) -> dict[str, Tally]:
  """Counts of correct / wrong / unparsable completions under each rule.

  Args:
    completions: [N] generated texts (a list, not one str).
    golds: [N] gold answers (canonical number strings, e.g. "18", "0.75", or
      numbers), one per completion (repeat a problem's answer for each of its
      samples).
    rules: which of RULES to count (one name, or a sequence of names).

  Returns:
    {rule: Tally}; every completion is counted under every rule, none dropped.

  Raises:
    ValueError: a str for `completions` or `golds`, the lengths differ, an
      unknown or no rule, a completion that is not a str, or a gold answer
      without a readable number.
  """
  for name, arg in (("completions", completions), ("golds", golds)):
    if isinstance(arg, (str, bytes)):
      raise ValueError(
        f"tally: {name} must be a sequence with one entry per completion, "
        f"got a {type(arg).__name__} ({arg[:40]!r})"
      )
  rules = _check_rules(rules)
  completions, golds = list(completions), list(golds)
  if len(completions) != len(golds):
    raise ValueError(
      f"tally: {len(completions)} completions but {len(golds)} gold answers"
    )
  for i, g in enumerate(golds):
    _gold_value(g, f"{i} (golds[{i}])")
  out = {}
  for rule in rules:
    counts = dict.fromkeys(OUTCOMES, 0)
    reasons: dict[str, int] = {}
    for text, gold in zip(completions, golds):
      g = grade(text, gold, rule)
      counts[g.outcome] += 1
      if g.outcome == "unparsable":
        reasons[g.extraction.source] = reasons.get(g.extraction.source, 0) + 1
    out[rule] = Tally(**counts, reasons=reasons)
  return out


def answer_id_fn(decode: Callable[[list[int]], str], rule: str = "strict"):
  """An `answer_fn` for `algorithms.methods.run` (self-consistency and the other
  selection rules vote on extracted answers, not on token sequences).

  Args:
    decode: token ids -> text (e.g. `tokenizer.decode`).
    rule: "strict" or "flexible" (RULES).

  Returns:
    fn(tokens [P, N, L], lengths [P, N]) -> int32 [P, N]: per problem, equal
    extracted values share an id (0, 1, ... in order of first appearance);
    -1 where the answer is unparsable (no vote).

  Raises:
    ValueError: an unknown rule (at once); from fn, shapes that do not fit.
  """
  if rule not in RULES:
    raise ValueError(f"unknown extraction rule {rule!r}; expected one of {RULES}")

  def fn(tokens_PxNxL, lengths_PxN) -> np.ndarray:
    toks, lens = np.asarray(tokens_PxNxL), np.asarray(lengths_PxN)
    if toks.ndim != 3 or lens.shape != toks.shape[:2]:
      raise ValueError(
        f"answer ids: need tokens [P, N, L] and lengths [P, N], got "
        f"{toks.shape} and {lens.shape}"
      )
    ids = np.full(lens.shape, -1, np.int32)
    for p in range(lens.shape[0]):
      table: dict[Fraction, int] = {}
      for n in range(lens.shape[1]):
        text = decode([int(t) for t in toks[p, n, : lens[p, n]]])
        answer = extract(text, rule).answer
        if answer is not None:
          ids[p, n] = table.setdefault(parse_number(answer), len(table))
    return ids

  return fn
