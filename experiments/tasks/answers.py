"""Final-answer extraction and comparison for GSM8K-style free text.

`extract_answer(text)` finds the final answer span, in this priority order:
  1. the last `\\boxed{...}` (nested braces allowed; `\\fbox{}` too),
  2. the last `#### ...` line (GSM8K's reference format),
  3. the last "answer is ..." / "answer: ..." (case-insensitive, e.g. "The final
     answer is $18."),
  4. only if `fallback_last_number=True`: the last number anywhere in the text,
and returns the first number in that span, normalised by `normalize_answer`.

Normalisation reads the number exactly (as a Fraction) so that `5`, `5.0`, `$5.00`
and `5 dollars` agree, `1,234` is 1234 (commas only as thousands separators),
`-3.5`, `.5`, `3/4` and `\\frac{3}{4}` are understood, and currency symbols,
percent signs, units and trailing periods are ignored. The canonical string is an
integer ("1200"), a terminating decimal ("-3.5") or a reduced ratio ("1/3").
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number token: optional sign (possibly before a currency symbol), thousands-grouped
# or plain digits, optional decimals; or a bare decimal like .5.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?\s*(?:[$\u20ac\u00a3]|\\\$)?\s*(?P<sign2>[-\u2212])?(?P<num>" + _NUM + r")"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.]))?"
)
_FRAC_RE = re.compile(r"(?P<sign>-)?\\[dt]?frac\{\s*(?P<a>-?\d+(?:\.\d+)?)\s*\}\{\s*(?P<b>\d+(?:\.\d+)?)\s*\}")
_HASH_RE = re.compile(r"####\s*(?P<span>[^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?\s*(?P<span>[^\n]*)", re.IGNORECASE)


def _boxed_spans(text: str) -> list[str]:
    """Contents of every \\boxed{...} / \\fbox{...}, with nested braces matched."""
    spans = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append(text[m.end():i - 1])
    return spans


def parse_number(span: str) -> Fraction | None:
    """The first number in `span` as an exact Fraction, or None if there is none."""
    if span is None:
        return None
    span = span.replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    frac = _FRAC_RE.search(span)
    m = _NUMBER_RE.search(span)
    if frac and (m is None or frac.start() <= m.start()):
        value = Fraction(frac.group("a")) / Fraction(frac.group("b"))
        return -value if frac.group("sign") else value
    if m is None:
        return None
    value = Fraction(m.group("num").replace(",", ""))
    if m.group("den") is not None:
        den = int(m.group("den"))
        if den == 0 or "." in m.group("num"):
            return None
        value /= den
    return -value if (m.group("sign") or m.group("sign2")) else value


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


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
    """Normalised final answer of a generated solution (see module doc), or None."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    candidates: list[str] = []
    boxed = _boxed_spans(text)
    if boxed:
        candidates.append(boxed[-1])
    hashes = _HASH_RE.findall(text)
    if hashes:
        candidates.append(hashes[-1])
    said = _ANSWER_IS_RE.findall(text)
    if said:
        candidates.append(said[-1])
    for span in candidates:  # the highest-priority format that holds a number wins
        ans = normalize_answer(span)
        if ans is not None:
            return ans
    if fallback_last_number:
        nums = list(_NUMBER_RE.finditer(text))
        if nums:
            return normalize_answer(nums[-1].group(0))
    return None


def answers_equal(a: str | None, b: str | None) -> bool:
    """True iff both are answers (strings with a number) of exactly the same value."""
    va = parse_number(a) if a is not None else None
    vb = parse_number(b) if b is not None else None
    return va is not None and vb is not None and va == vb
