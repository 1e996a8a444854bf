"""A strict, exact checker for arithmetic-expression answers (countdown, puzzle24).

reasoning-gym scores these answers with sympy's expression parser, which runs model text as Python: a completion
can run Python, hang on `9**9**9**9`, and puzzle24's check accepts any four numbers that make 24. Here an
answer is only ever *read*, never run:

1. A cheap pre-check before any parsing: at most `MAX_CHARS` characters, only ASCII digits, spaces,
   `+ - * / ( )` (after mapping `×`, `÷`, `−`, `\\times`, `\\div`, `\\cdot` to ASCII), no `**` or `//`,
   no literal longer than `MAX_LITERAL_DIGITS` digits.
2. `ast.parse(text, mode="eval")`, then a walk that accepts only `BinOp` with `+ - * /`, unary `-`/`+`,
   and non-bool `int` constants; at most `MAX_NODES` nodes and `MAX_DEPTH` levels. Anything else (names,
   calls, attributes, lambdas, floats, `**`) makes the answer unparsable.
3. Exact rational arithmetic with `fractions.Fraction`; an intermediate whose numerator or denominator
   passes `MAX_BITS` bits stops the walk; division by zero is a wrong answer, not an exception.
4. The integer literals, as a multiset, checked against the given numbers by the task's rule:
   `"all"` (each given number exactly once) or `"at_most"` (each at most once).

Only operators the task allows are accepted; unary minus needs `-` to be allowed. Intermediate
fractions are allowed (8 / (3 - 8 / 3) = 24 is a valid puzzle24 answer), as in reasoning-gym.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

MAX_RAW_CHARS = 1_000  # before normalising; anything longer is rejected without a look
MAX_CHARS = 256
MAX_LITERAL_DIGITS = 12
MAX_NODES = 128
MAX_DEPTH = 32
MAX_BITS = 256

NUMBER_RULES = ("all", "at_most")
ALL_OPERATORS = "+-*/"

_SPELLINGS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/", "−": "-"}
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")
_LONG_LITERAL = re.compile(rf"[0-9]{{{MAX_LITERAL_DIGITS + 1}}}")
_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_UNARY_OPS = {ast.USub: "-", ast.UAdd: "+"}


class Unparsable(ValueError):
    """The text is not an arithmetic expression this checker accepts."""


@dataclass(frozen=True)
class Evaluation:
    """What an expression computes: `value` (None when it divides by zero or grows too large, with
    `error` saying which) and the integer literals it is written with, in order."""

    value: Fraction | None
    literals: tuple[int, ...]
    error: str | None = None


class _Stop(Exception):
    """Division by zero or a too-large intermediate: the expression is well-formed but has no value."""


def normalise(text: str) -> str:
    """Map the usual non-ASCII operator spellings to ASCII and strip surrounding whitespace."""
    for spelling, ascii_op in _SPELLINGS.items():
        text = text.replace(spelling, ascii_op)
    return text.strip()


def _precheck(text: str, operators: str) -> str:
    if not isinstance(text, str):
        raise Unparsable("not text")
    if len(text) > MAX_RAW_CHARS:
        raise Unparsable(f"longer than {MAX_RAW_CHARS} characters")
    text = normalise(text)
    if not text:
        raise Unparsable("empty")
    if len(text) > MAX_CHARS:
        raise Unparsable(f"longer than {MAX_CHARS} characters")
    bad = set(text) - _ALLOWED_CHARS
    if bad:
        raise Unparsable(f"characters not allowed: {''.join(sorted(bad))[:20]!r}")
    if "**" in text or "//" in text:
        raise Unparsable("only + - * / are allowed")
    if _LONG_LITERAL.search(text):
        raise Unparsable(f"a number longer than {MAX_LITERAL_DIGITS} digits")
    for op in ALL_OPERATORS:
        if op not in operators and op in text:
            raise Unparsable(f"operator {op!r} is not allowed here")
    return text


def _check_tree(tree: ast.Expression, operators: str) -> None:
    """Reject every node that is not a digit literal or an allowed operator, before evaluating."""
    nodes = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise Unparsable(f"more than {MAX_NODES} terms and operators")
        if depth > MAX_DEPTH:
            raise Unparsable(f"nested deeper than {MAX_DEPTH}")
        if isinstance(node, ast.BinOp) and _BINARY_OPS.get(type(node.op), "?") in operators:
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp) and _UNARY_OPS.get(type(node.op), "?") in operators:
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            pass
        else:
            raise Unparsable(f"{type(node).__name__} is not allowed")


def _value(node: ast.AST, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Constant):
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, literals)
        return -operand if isinstance(node.op, ast.USub) else operand
    left = _value(node.left, literals)
    right = _value(node.right, literals)
    op = type(node.op)
    if op is ast.Add:
        result = left + right
    elif op is ast.Sub:
        result = left - right
    elif op is ast.Mult:
        result = left * right
    else:
        if right == 0:
            raise _Stop("division by zero")
        result = left / right
    if result.numerator.bit_length() > MAX_BITS or result.denominator.bit_length() > MAX_BITS:
        raise _Stop(f"an intermediate value passes {MAX_BITS} bits")
    return result


def _literals(node: ast.AST) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(text: str, operators: str = ALL_OPERATORS) -> Evaluation:
    """Read `text` as an arithmetic expression and compute it exactly. Raises `Unparsable`."""
    text = _precheck(text, operators)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise Unparsable(f"not an expression ({type(error).__name__})") from None
    _check_tree(tree, operators)
    literals: list[int] = []
    try:
        value = _value(tree.body, literals)
    except _Stop as stop:
        return Evaluation(None, tuple(_literals(tree.body)), str(stop))
    return Evaluation(value, tuple(literals))


def uses_numbers(literals: tuple[int, ...] | list[int], numbers: list[int], rule: str) -> bool:
    """Whether the literals use the given numbers as the rule says ("all": each exactly once;
    "at_most": each at most once, no others)."""
    if rule == "all":
        return Counter(literals) == Counter(numbers)
    if rule == "at_most":
        return not (Counter(literals) - Counter(numbers))
    raise ValueError(f"unknown number rule {rule!r}; expected one of {NUMBER_RULES}")
