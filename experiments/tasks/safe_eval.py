"""A small restricted expression evaluator built on Python's `ast` (never eval/exec).

Used to evaluate the expressions of the GSM-Symbolic templates (`#init` samplers,
`#conditions`, `#answer` and the `{...}` placeholders of the solution templates), and
handy anywhere an arithmetic expression from data must be computed safely.

What is allowed
  * literals: int, float, str, bool, None; lists and tuples of allowed expressions;
  * names: looked up in the caller's `env` (variables); no name may start with `_`;
  * arithmetic `+ - * / // % **` on numbers only (no string repetition/concatenation),
    unary `- + not`; `**` only with an integer exponent of at most `MAX_POW_EXPONENT`;
  * comparisons (`== != < <= > >=`, chained), `and`/`or`, `x if c else y`;
  * `seq[i]` with an integer index into a list, tuple or string;
  * calls `f(...)` where `f` is a bare name in the caller's `functions` whitelist
    (positional arguments only). A value in `env` can never be called.
Anything else (attribute access, lambdas, comprehensions, f-strings, keyword
arguments, `*args`, walrus, imports, statements, dunder names) raises ValueError at
parse time; runtime failures (unknown name, division by zero, type errors) raise
ValueError at evaluation time.

Exact arithmetic: numeric literals are read as exact rationals (`0.1` is
`Fraction(1, 10)`) and `int / int` yields a `fractions.Fraction`, so `is_int`,
`divides` and `int(...)` in the templates never suffer float round-off (a float
expression like `int(100 * 29 / 100)` can otherwise give 28). `to_number` turns the
strings found in data ("3", "0.25", "1/4") into the same exact types.
"""

from __future__ import annotations

import ast
import fractions
import math
import numbers
import operator
import re
from typing import Any, Callable, Mapping

Fraction = fractions.Fraction

MAX_POW_EXPONENT = 64
MAX_SOURCE_CHARS = 4000
MAX_INT_DIGITS = 200  # results with more decimal digits than this are refused

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
  ast.FloorDiv: operator.floordiv,
  ast.Mod: operator.mod,
  ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
  ast.Eq: operator.eq,
  ast.NotEq: operator.ne,
  ast.Lt: operator.lt,
  ast.LtE: operator.le,
  ast.Gt: operator.gt,
  ast.GtE: operator.ge,
}
_ALLOWED_NODES = (
  ast.Expression,
  ast.Constant,
  ast.Name,
  ast.Load,
  ast.List,
  ast.Tuple,
  ast.BinOp,
  ast.UnaryOp,
  ast.BoolOp,
  ast.Compare,
  ast.IfExp,
  ast.Call,
  ast.Subscript,
  ast.And,
  ast.Or,
  ast.Not,
  ast.USub,
  ast.UAdd,
  *_BINOPS.keys(),
  *_CMPOPS.keys(),
)
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_RATIO_RE = re.compile(r"[+-]?\d+\s*/\s*[+-]?\d+")


def is_number(x: Any) -> bool:
  """True for int, float and Fraction (bool counts as int, as in Python)."""
  return isinstance(x, numbers.Rational) or isinstance(x, float)


def to_number(x: Any) -> Any:
  """Exact number for numeric-looking data: "3" -> 3, "0.25"/0.25 -> Fraction(1, 4),
  "1/4" -> Fraction(1, 4); Fractions with denominator 1 become int. Anything else
  (names, words) is returned unchanged."""
  if isinstance(x, bool):
    return x
  if isinstance(x, float):
    if not math.isfinite(x):
      raise ValueError(f"non-finite number {x!r}")
    x = Fraction(repr(x))
  elif isinstance(x, str):
    s = x.strip()
    if _NUMBER_RE.fullmatch(s) or _RATIO_RE.fullmatch(s):
      x = Fraction(s.replace(" ", ""))
    else:
      return x
  if isinstance(x, Fraction) and x.denominator == 1:
    return int(x.numerator)
  return x


class Expr:
  """A parsed and validated expression; evaluate it with `evaluate(expr, env, fns)`."""

  __slots__ = ("source", "tree", "names", "calls")

  def __init__(self, source: str, tree: ast.expr, names: frozenset, calls: frozenset):
    self.source = source
    self.tree = tree
    self.names = names  # variable names read (function names excluded)
    self.calls = calls  # function names called

  def __repr__(self) -> str:
    return f"Expr({self.source!r})"


def parse(source: str) -> Expr:
  """Parse `source` as one restricted expression; ValueError if anything is disallowed."""
  if not isinstance(source, str):
    raise ValueError(f"expression must be a str, got {type(source).__name__}")
  if len(source) > MAX_SOURCE_CHARS:
    raise ValueError(f"expression longer than {MAX_SOURCE_CHARS} characters")
  try:
    tree = ast.parse(source.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"syntax error in expression {source!r}: {e.msg}") from None
  calls = set()
  for node in ast.walk(tree):
    if not isinstance(node, _ALLOWED_NODES):
      raise ValueError(f"{type(node).__name__} is not allowed in expression {source!r}")
    if isinstance(node, ast.Name):
      if node.id.startswith("_"):
        raise ValueError(
          f"name {node.id!r} is not allowed (leading underscore) in {source!r}"
        )
    elif isinstance(node, ast.Call):
      if not isinstance(node.func, ast.Name):
        raise ValueError(
          f"only calls of plain function names are allowed in {source!r}"
        )
      if node.keywords:
        raise ValueError(f"keyword arguments are not allowed in {source!r}")
      if any(isinstance(a, ast.Starred) for a in node.args):
        raise ValueError(f"*args are not allowed in {source!r}")
      calls.add(node.func.id)
    elif isinstance(node, ast.Constant):
      if not isinstance(node.value, (int, float, str, bool, type(None))):
        raise ValueError(f"constant {node.value!r} is not allowed in {source!r}")
  call_targets = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
  names = {
    n.id
    for n in ast.walk(tree)
    if isinstance(n, ast.Name) and id(n) not in call_targets
  }
  return Expr(source, tree.body, frozenset(names), frozenset(calls))


def evaluate(
  expr: Expr | str,
  env: Mapping[str, Any] = (),
  functions: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
  """Evaluate a restricted expression. `env` maps variable names to values;
  `functions` whitelists the callable names (default: `MATH_FUNCTIONS`).
  Raises ValueError on any failure."""
  if isinstance(expr, str):
    expr = parse(expr)
  env = dict(env)
  functions = dict(MATH_FUNCTIONS if functions is None else functions)
  try:
    return _eval(expr.tree, env, functions)
  except ValueError:
    raise
  except (ArithmeticError, TypeError, IndexError, KeyError, RecursionError) as e:
    raise ValueError(
      f"cannot evaluate {expr.source!r}: {type(e).__name__}: {e}"
    ) from None


def _check_size(x: Any) -> Any:
  if isinstance(x, Fraction):
    big = max(abs(x.numerator), x.denominator)
  elif isinstance(x, int):
    big = abs(x)
  else:
    return x
  if big.bit_length() > MAX_INT_DIGITS * 3.33:
    raise ValueError(f"number with more than {MAX_INT_DIGITS} digits")
  return x


def _exact(x: Any) -> Any:
  return to_number(x) if isinstance(x, (float, Fraction)) else x


def _eval(node: ast.expr, env: dict, fns: dict) -> Any:
  if isinstance(node, ast.Constant):
    return to_number(node.value) if isinstance(node.value, float) else node.value
  if isinstance(node, ast.Name):
    if node.id in env:
      return env[node.id]
    raise ValueError(f"unknown name {node.id!r}")
  if isinstance(node, ast.BinOp):
    a, b = _eval(node.left, env, fns), _eval(node.right, env, fns)
    if not (is_number(a) and is_number(b)):
      raise ValueError(f"arithmetic on non-numbers {a!r} and {b!r}")
    if isinstance(node.op, ast.Pow):
      if not isinstance(b, numbers.Integral) or abs(b) > MAX_POW_EXPONENT:
        raise ValueError(
          f"** needs an integer exponent of at most {MAX_POW_EXPONENT}, got {b!r}"
        )
      if isinstance(a, int) and b < 0:
        a = Fraction(a)
    if (
      isinstance(node.op, ast.Div)
      and isinstance(a, numbers.Rational)
      and isinstance(b, numbers.Rational)
    ):
      if b == 0:
        raise ValueError("division by zero")
      return _exact(Fraction(a) / Fraction(b))
    return _check_size(_exact(_BINOPS[type(node.op)](a, b)))
  if isinstance(node, ast.UnaryOp):
    v = _eval(node.operand, env, fns)
    if isinstance(node.op, ast.Not):
      return not v
    if not is_number(v):
      raise ValueError(f"unary {type(node.op).__name__} on non-number {v!r}")
    return -v if isinstance(node.op, ast.USub) else +v
  if isinstance(node, ast.BoolOp):
    if isinstance(node.op, ast.And):
      v = True
      for sub in node.values:
        v = _eval(sub, env, fns)
        if not v:
          return v
      return v
    v = False
    for sub in node.values:
      v = _eval(sub, env, fns)
      if v:
        return v
    return v
  if isinstance(node, ast.Compare):
    left = _eval(node.left, env, fns)
    for op, comp in zip(node.ops, node.comparators):
      right = _eval(comp, env, fns)
      if not _CMPOPS[type(op)](left, right):
        return False
      left = right
    return True
  if isinstance(node, ast.IfExp):
    return _eval(node.body if _eval(node.test, env, fns) else node.orelse, env, fns)
  if isinstance(node, ast.List):
    return [_eval(e, env, fns) for e in node.elts]
  if isinstance(node, ast.Tuple):
    return tuple(_eval(e, env, fns) for e in node.elts)
  if isinstance(node, ast.Subscript):
    seq = _eval(node.value, env, fns)
    idx = _eval(node.slice, env, fns)
    if (
      not isinstance(seq, (list, tuple, str))
      or not isinstance(idx, int)
      or isinstance(idx, bool)
    ):
      raise ValueError(
        f"only seq[int] indexing of a list/tuple/str is allowed, got {type(seq).__name__}[{idx!r}]"
      )
    return seq[idx]
  if isinstance(node, ast.Call):
    name = node.func.id
    if name not in fns:
      raise ValueError(f"call of non-whitelisted function {name!r}")
    return fns[name](*[_eval(a, env, fns) for a in node.args])
  raise ValueError(f"{type(node).__name__} is not allowed")  # unreachable after parse()


# ---------------------------------------------------------------------------
# Deterministic helpers used by the GSM-Symbolic templates. All are exact.


def _num(x: Any, fn: str) -> Any:
  x = to_number(x) if isinstance(x, (str, float)) else x
  if not is_number(x):
    raise ValueError(f"{fn}() needs a number, got {x!r}")
  return x


def is_int(x: Any) -> bool:
  """True iff x is an integer-valued number."""
  x = _num(x, "is_int")
  return isinstance(x, int) or (isinstance(x, Fraction) and x.denominator == 1)


def divides(a: Any, b: Any) -> bool:
  """True iff b != 0 and a / b is an integer (`divides(12, 4)` is True): the templates'
  convention, i.e. "a is divisible by b"."""
  a, b = _num(a, "divides"), _num(b, "divides")
  return b != 0 and Fraction(a) % Fraction(b) == 0


def to_int(x: Any) -> int:
  """int() truncating toward zero, as Python's int."""
  return int(_num(x, "int"))


def ensure_int(x: Any) -> int:
  """x as an int; ValueError if x is not integer-valued."""
  if not is_int(x):
    raise ValueError(f"ensure_int: {x!r} is not an integer")
  return int(_num(x, "ensure_int"))


def to_real(x: Any) -> Any:
  """The templates' float(): an exact number (displayed as a decimal)."""
  return _exact(_num(x, "float"))


def round_half_even(x: Any, ndigits: Any = None) -> Any:
  """Python's round() (half to even) on exact numbers."""
  x = _num(x, "round")
  if ndigits is None:
    return round(x)
  if not isinstance(ndigits, int):
    raise ValueError(f"round(): ndigits must be an int, got {ndigits!r}")
  return _exact(round(Fraction(x), ndigits))


class ShownFraction(Fraction):
  """A Fraction displayed as 'p/q' in rendered text (the templates' Fraction(x))."""


def as_fraction(x: Any) -> ShownFraction:
  x = _num(x, "Fraction")
  return ShownFraction(
    Fraction(x).limit_denominator(10**6) if isinstance(x, float) else x
  )


MATH_FUNCTIONS: dict[str, Callable[..., Any]] = {
  "is_int": is_int,
  "divides": divides,
  "int": to_int,
  "ensure_int": ensure_int,
  "float": to_real,
  "round": round_half_even,
  "Fraction": as_fraction,
  "abs": lambda x: abs(_num(x, "abs")),
  "min": lambda *xs: min(_num(x, "min") for x in xs),
  "max": lambda *xs: max(_num(x, "max") for x in xs),
}
