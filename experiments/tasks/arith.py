"""Synthetic multi-step arithmetic with one-step-per-line solutions and exact step labels.

A problem is a chain of `n_steps` operations applied to a running value, starting
from a first number. The question is that chain as ordinary infix arithmetic, with
the fewest parentheses that keep the left-to-right order (so it also means the same
thing to a human reader and to Python). The solution writes one operation per line,
`running op operand = new running`, then the final line `A:<answer>`. A full
training text (what the tokenizer encodes, BOS ... EOS) looks like:

    Q:(37+48-19)*2        <- prompt: "Q:" + question + "\\n"
    37+48=85              <- step 1
    85-19=66              <- step 2
    66*2=132              <- step 3
    A:132                 <- answer step (ends with EOS)

Alphabet: digits, `+ - * ( ) = : Q A` and the newline, which is the step delimiter.
Difficulty knobs of `generate`: `n_steps` (int or (lo, hi) range, default 2-4),
`n_digits` (digits of the first number and of +/- operands, default 2), `mul_digits`
(digits of `*` operands, default 1, operands >= 2), `ops`, and `allow_negative`
(default False: a `-` operand never exceeds the running value, so no value goes
below zero). Generation uses a seeded numpy Generator and is deterministic.

Process labels (`step_labels`) are exact and prefix-based, as in Math-Shepherd's
"hard" labels for a task with a single valid path: step i is correct iff every
earlier step is correct AND it is exactly the problem's i-th operation applied to
the correct running value with the right result (`85-19=66`); the `A:` line is
correct iff all `n_steps` steps came before it, all correct, and it states the
answer. Once a step is wrong every later step is labelled wrong, even if it is
locally consistent, because the partial solution can no longer be the problem's
solution. Lines after the `A:` line are wrong.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

PROMPT_PREFIX = "Q:"
ANSWER_PREFIX = "A:"
DELIM = "\n"
OPS = ("+", "-", "*")
_STEP_RE = re.compile(r"(-?\d+)([+*-])(\d+)=(-?\d+)")
_ANSWER_RE = re.compile(r"A:(-?\d+)")


def _apply(a: int, op: str, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  raise ValueError(f"unknown operator {op!r}")


@dataclasses.dataclass(frozen=True)
class ArithProblem:
  """One problem: `first op_1 operands_1 op_2 operands_2 ...` applied left to right."""

  first: int
  ops: tuple[str, ...]
  operands: tuple[int, ...]

  def __post_init__(self):
    if len(self.ops) != len(self.operands) or not self.ops:
      raise ValueError("ops and operands must be non-empty and of equal length")
    if any(op not in OPS for op in self.ops):
      raise ValueError(f"ops must be among {OPS}, got {self.ops}")
    if self.first < 0 or any(b < 0 for b in self.operands):
      raise ValueError("numbers in a problem must be non-negative")

  @property
  def n_steps(self) -> int:
    return len(self.ops)

  @property
  def values(self) -> tuple[int, ...]:
    """Running values: values[0] = first, values[i] = value after step i."""
    vals = [self.first]
    for op, b in zip(self.ops, self.operands):
      vals.append(_apply(vals[-1], op, b))
    return tuple(vals)

  @property
  def answer(self) -> int:
    return self.values[-1]

  @property
  def question(self) -> str:
    """Infix expression with minimal parentheses (+,- left-assoc., * binds tighter)."""
    expr, is_sum = str(self.first), False
    for op, b in zip(self.ops, self.operands):
      if op == "*" and is_sum:
        expr = f"({expr})"
      expr = f"{expr}{op}{b}"
      is_sum = op != "*"
    return expr

  @property
  def steps(self) -> tuple[str, ...]:
    """The step lines, without the answer line: ("37+48=85", "85-19=66", ...)."""
    v = self.values
    return tuple(
      f"{v[i]}{op}{b}={v[i + 1]}"
      for i, (op, b) in enumerate(zip(self.ops, self.operands))
    )

  @property
  def solution(self) -> str:
    """Reference continuation of the prompt: steps and answer line, newline-separated."""
    return DELIM.join(self.steps + (f"{ANSWER_PREFIX}{self.answer}",))

  @property
  def prompt(self) -> str:
    return make_prompt(self.question)

  @property
  def text(self) -> str:
    """Prompt + solution: the full training text (tokenize with add_bos/add_eos)."""
    return self.prompt + self.solution


def make_prompt(question: str) -> str:
  """The string a model continues: "Q:<question>\\n"."""
  return f"{PROMPT_PREFIX}{question}{DELIM}"


def _range_of(x: int | tuple[int, int], name: str) -> tuple[int, int]:
  lo, hi = (x, x) if isinstance(x, (int, np.integer)) else tuple(x)
  if not (1 <= lo <= hi):
    raise ValueError(
      f"{name} must be >= 1 (or a (lo, hi) range with 1 <= lo <= hi), got {x!r}"
    )
  return int(lo), int(hi)


def generate(
  n: int,
  seed: int,
  n_steps: int | tuple[int, int] = (2, 4),
  n_digits: int = 2,
  mul_digits: int = 1,
  ops: Sequence[str] = OPS,
  allow_negative: bool = False,
) -> list[ArithProblem]:
  """`n` random problems from `np.random.default_rng(seed)` (see module doc for knobs).

  First number and +/- operands: uniform in [0, 10**n_digits - 1] (a `-` operand in
  [0, min(that, running value)] unless allow_negative); `*` operands: uniform in
  [2, 10**mul_digits - 1]; ops uniform over `ops`; n_steps uniform over its range.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  lo_steps, hi_steps = _range_of(n_steps, "n_steps")
  _range_of(n_digits, "n_digits")
  _range_of(mul_digits, "mul_digits")
  ops = tuple(ops)
  if not ops or any(op not in OPS for op in ops):
    raise ValueError(f"ops must be a non-empty subset of {OPS}, got {ops}")
  rng = np.random.default_rng(seed)
  top, mul_top = 10**n_digits - 1, 10**mul_digits - 1
  if "*" in ops and mul_top < 2:
    raise ValueError("mul_digits must be >= 1")
  problems = []
  for _ in range(n):
    k = int(rng.integers(lo_steps, hi_steps + 1))
    value = first = int(rng.integers(0, top + 1))
    chosen, operands = [], []
    for _ in range(k):
      op = ops[int(rng.integers(len(ops)))]
      if op == "*":
        b = int(rng.integers(2, mul_top + 1))
      elif op == "-" and not allow_negative:
        b = int(rng.integers(0, min(top, value) + 1))
      else:
        b = int(rng.integers(0, top + 1))
      value = _apply(value, op, b)
      chosen.append(op)
      operands.append(b)
    problems.append(ArithProblem(first, tuple(chosen), tuple(operands)))
  return problems


# ---------------------------------------------------------------------------
# Character-level tokenizer.

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ALPHABET = DELIM + "0123456789+-*()=:QA"


class CharTokenizer:
  """One token per character of `alphabet`, after PAD=0, BOS=1, EOS=2.

  `newline_id` is the step-delimiter token: a step ends at the token position of
  its "\\n" (and the answer step at the EOS position), see `step_spans`.
  """

  def __init__(self, alphabet: str = ALPHABET):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError("alphabet has repeated characters")
    self.specials = (PAD, BOS, EOS)
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.alphabet = alphabet
    self._ids = {c: i + len(self.specials) for i, c in enumerate(alphabet)}
    self._chars = list(self.specials) + list(alphabet)
    self.newline_id = self._ids.get(DELIM)

  @property
  def vocab_size(self) -> int:
    return len(self._chars)

  def encode(
    self, text: str, add_bos: bool = False, add_eos: bool = False
  ) -> list[int]:
    try:
      ids = [self._ids[c] for c in text]
    except KeyError as e:
      raise ValueError(
        f"character {e.args[0]!r} is not in the tokenizer alphabet {self.alphabet!r}"
      ) from None
    return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

  def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
    """Text of `ids`; PAD/BOS are dropped, and decoding stops at the first EOS
    (or EOS is dropped too if stop_at_eos is False)."""
    out = []
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} outside [0, {self.vocab_size})")
      if i == self.eos_id and stop_at_eos:
        break
      if i >= len(self.specials):
        out.append(self._chars[i])
    return "".join(out)


TOKENIZER = CharTokenizer()


# ---------------------------------------------------------------------------
# Answer extraction, checking and step labels.


def extract_answer(text: str) -> int | None:
  """The integer on the first line that starts with "A:" (the line must be exactly
  `A:<integer>`), or None if there is no such line or it is malformed."""
  for line in text.split(DELIM):
    if line.startswith(ANSWER_PREFIX):
      m = _ANSWER_RE.fullmatch(line.strip())
      return int(m.group(1)) if m else None
  return None


def check_answer(problem: ArithProblem, text: str) -> bool:
  """True iff `text` (a generated solution) states the problem's answer."""
  return extract_answer(text) == problem.answer


def split_steps(solution_text: str) -> list[str]:
  """Step lines of a solution (the continuation after the prompt); a trailing
  newline does not start a new step."""
  lines = solution_text.split(DELIM)
  if lines and lines[-1] == "":
    lines.pop()
  return lines


def step_spans(solution_text: str) -> list[int]:
  """Character offset where each step ends in `solution_text`: the index of the
  step's "\\n", or len(solution_text) for a last step with no newline (where EOS
  goes). With the character tokenizer the token position is prompt length (+1 for
  BOS) + this offset, which is where a PRM reads the step's score."""
  ends, pos = [], 0
  for line in split_steps(solution_text):
    pos += len(line)
    ends.append(pos)
    pos += 1
  return ends


def step_labels(problem: ArithProblem, solution_text: str) -> list[bool]:
  """Exact prefix-correctness label of every step of `solution_text` (module doc)."""
  values = problem.values
  labels, ok = [], True
  answered = False
  for i, line in enumerate(split_steps(solution_text)):
    if ok and not answered:
      if i < problem.n_steps:
        m = _STEP_RE.fullmatch(line)
        ok = bool(m) and (
          int(m.group(1)),
          m.group(2),
          int(m.group(3)),
          int(m.group(4)),
        ) == (values[i], problem.ops[i], problem.operands[i], values[i + 1])
      elif i == problem.n_steps:
        m = _ANSWER_RE.fullmatch(line)
        ok = bool(m) and int(m.group(1)) == problem.answer
        answered = True
      else:
        ok = False
    elif answered:
      ok = False
    labels.append(ok)
  return labels
