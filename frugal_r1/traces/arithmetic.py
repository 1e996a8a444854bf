"""Worked integer arithmetic, written the way the traces teach it: one short, local step at a time.

Every binary operation is written on its own line (a multiplication of two multi-digit numbers on a few),
and its last line ends with the signed result. `evaluate` reduces a whole expression one operation at a
time; for expressions with precedence and parentheses it rewrites the expression after each one
(`= 5218 - 1200 * 3`), so the state is on the page and the next step is a copy with one substitution.
A plain chain of + and - is not rewritten (that cost ~100 of ~430 tokens for 6 four-digit terms): each
line starts from the running total, and the next term is the one after the last term used.

Design choices (chosen for a ~10-30M model that sees every digit as its own token):
- Column work runs from the least significant digit; a column is `top+bottom[+1]=sum`, the `+1` written
  only when the previous column carried (its sum had two digits). Missing digits are written as 0, so
  every column has two operands. The result follows `so`; its digits are the columns' last digits read
  back, the last column's sum written whole (`4821 + 397: 1+7=8, 2+9=11, 8+3+1=12, 4+0+1=5, so 5218`).
- Subtraction columns run larger - smaller, and every decision is written after the digits it depends on,
  never before them. A column writes its digits and the borrow it owes first (`2-3-1`), then either its
  value (`=8`) or `<0 so 1{column}={value}` (`2-3-1<0 so 12-3-1=8`): the borrow is decided on digits
  already on the page, and the next column's `-1` copies it. Which operand is larger is decided the same
  way: a mixed-sign sum is written as `x - y` with the non-negative operand first (`2 - -1 = 2 + 1`,
  `-663 + 792 = 792 - 663`), then the two are compared digit by digit from the left, zero-padded, up to the
  first pair that differs (`4=4, 2<6`; `397 - 5218, 0<5`), and only a `<` swaps them:
  `583 - 764, 5<7 so -(764 - 583): 4-3=1, 6-8<0 so 16-8=8, 7-5-1=1, so -181`. Same-sign sums are added
  (`-5 - 3 = -(5 + 3)`), so the columns only ever see non-negative numbers.
  Why (2026-12-07): the seed-0 SFT model's errors on chain_sum (47 of 260 samples on problems of up to three
  terms) were wrong borrows (`6-8=2`) and wrong swaps (`62 - 45 = -(45 - 62)`), both decided before the
  digits they rest on were written (`12-3-1=8` put the borrow's 10 ahead of the comparison it stands for;
  `397 - 5218 = -(5218 - 397)` swapped before comparing). chain_sum alone, 2,000 pretraining steps of the
  speedrun recipe, greedy accuracy on 200 held-out problems, old -> new: 68% -> 77% (train.seed=1) and
  57% -> 78% (train.seed=2), for ~11% more tokens (chain_sum mean 174 -> 193). The whole speedrun (AVX2 EPYC,
  seed 0, against the same recipe with the old format), pass@1 after GRPO: chain_sum 63.0 -> 92.2,
  basic_arithmetic 58.4 -> 60.5, mean of the five tasks 47.1 -> 54.1 (docs/speedrun-avx2-subtraction); seed 1
  with the new format: chain_sum 87.2, basic_arithmetic 59.9, mean 52.7.
  Tried and not kept (2026-12-06): every error of the seed-0 SFT model on chain_sum (93 of 400 samples on 200
  held-out problems) was in a subtraction, 42 a wrong borrow and 39 the operands in the wrong order, so a
  format that decides nothing ahead was tried: operands as they stand, `top-bottom[-1]=raw`, a raw value
  below zero adding 10 on the spot (`2-3-1=-2+10=8`), and only when the last column stays below zero
  `below 0, so -(5218 - 397): ...` (6-term 4-digit chains: ~490 tokens instead of ~430). It halved the
  samples that went wrong in a subtraction (23% -> 12%, seed 0), but over two full speedruns, pass@1 after
  SFT, old -> new: chain_sum 74.2 -> 66.1 (seed 0) and 64.8 -> 96.2 (seed 1); basic_arithmetic 60.1 -> 38.5
  and 59.9 -> 55.8; puzzle24 27.4 -> 22.5 and 29.8 -> 25.4; mean 47.6 -> 26.5 and 47.4 -> 52.4. The seed
  moved chain_sum as much as the format did.
- Two single-digit operands are one column, in the form every multi-digit column takes (`3 - 7, 3<7 so -(7 - 3):
  7-3=4, so -4`, `7 * 8: 7*8=56, so 56`), not a spaced fact (`3 - 7 = -(7 - 3) = -4`): a model trained on
  chain_sum alone made 48 of its 60 teacher-forced errors on held-out traces in those spaced facts (3.8% of
  their tokens wrong, against 0.03% of the column sums), the same facts it gets right inside columns. With
  one form, chain_sum alone, 1,500 pretraining steps of 2 rows, greedy accuracy on 200 held-out problems rose
  from 16% to 30.5% (2026-11-29, examples/probe_pretraining.py).
  A multi-digit operand with a 0 (or, for *, a 1) is still a copy on one line (`4821 + 0 = 4821`).
- Multiplication by a single digit is columns with a carry that may exceed 1 (`7*9=63, 5*9+6=51, so 513`).
  Tried and not kept (2026-12-07): the product written before the carry is added (`5*9+6=45+6=51`), since 27 of
  the seed-0 SFT model's 80 wrong basic_arithmetic samples (100 held-out x 2) first went wrong in such a column
  (`6*8+5=53` written 59 or 43). basic_arithmetic alone, 2,000 pretraining steps, train.seed=1, greedy on 200
  held-out: 41% against 44% for the current columns. (46 of the 80 first went wrong rewriting the expression;
  the trial against those is under the order of operations below.)
  A multi-digit multiplier (the operand with fewer digits, then fewer nonzero digits) is split into its
  nonzero digits (`57 * 59 = 57 * 9 + 57 * 50`), each partial product is its own line (times 10 appends
  a zero), the partials are added with column addition, and a summary line restates the product.
- Division is exact in almost every row; a one-digit quotient is a fact (`84 / 12 = 7`), a longer one is
  short division left to right (`1278 / 18: 127/18=7 r1, 18/18=1 r0, so 71`). reasoning-gym's
  basic_arithmetic evaluates `/` as Python's `//`, so an inexact division is written with its remainder
  and rounded down (floor), negative quotients included.
- Order of operations (`evaluate`): the innermost parentheses first, inside them the leftmost `*` or `/`,
  else the leftmost `+` or `-`; a group left holding one number loses its parentheses (`-( n )` becomes
  `-n`). This is Python's precedence, unary minus included, and reproduces reasoning-gym's answers.
  Tried and not kept (2026-12-07): that sign change on a line of its own, so a rewrite only ever substitutes a
  value (`= 5 + -( -12 )`, `-( -12 ) = 12`, `= 5 + 12`), since 15 of the seed-0 SFT model's 46 rewrite errors
  (100 held-out x 2) lost or added a sign around a negated group (`= -( -68 + 2 )` written `= 68 + 2`; `5 + -( -12 )`
  written `5 + -12`). basic_arithmetic alone, 2,000 pretraining steps, greedy on 200 held-out, against the current
  rewrite: 41% vs 44% (train.seed=1), 36% vs 46% (train.seed=2); at seed 1 its greedy samples went wrong first
  near a negated group 21 times against 18.
"""

from __future__ import annotations

import re
from typing import Union

Token = Union[int, str]  # an integer, or one of "+", "-", "*", "/", "(", "-(", ")"

_TOKEN_RE = re.compile(r"\s*(\d+|[-+*/()])")


def _digits(n: int) -> list[int]:
    """Digits of n >= 0, least significant first."""
    return [int(c) for c in reversed(str(n))]


def add_columns(a: int, b: int) -> str:
    """`1+7=8, 2+9=11, 8+3+1=12, 4+0+1=5` for a + b (both >= 0)."""
    da, db = _digits(a), _digits(b)
    parts, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        total = x + y + carry
        parts.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return ", ".join(parts)


def sub_columns(a: int, b: int) -> str:
    """`8-7=1, 1-9<0 so 11-9=2, 2-3-1<0 so 12-3-1=8, 5-0-1=4` for a - b (a >= b >= 0).

    A column writes its digits (and the borrow it owes) first; only then whether it must borrow, and if
    so it is written again with the top digit plus 10.
    """
    da, db = _digits(a), _digits(b)
    parts, borrow = [], 0
    for i in range(len(da)):
        top = da[i]
        bottom = db[i] if i < len(db) else 0
        column, raw = f"{top}-{bottom}{'-1' if borrow else ''}", top - bottom - borrow
        parts.append(f"{column}={raw}" if raw >= 0 else f"{column}<0 so 1{column}={raw + 10}")
        borrow = int(raw < 0)
    return ", ".join(parts)


def compare(a: int, b: int) -> str:
    """`4=4, 2<6` for a against b: digits from the left, the shorter number padded with 0s, up to the first
    pair that differs."""
    width = max(len(str(a)), len(str(b)))
    pairs = []
    for x, y in zip(str(a).zfill(width), str(b).zfill(width)):
        pairs.append(f"{x}{'<' if x < y else '>' if x > y else '='}{y}")
        if x != y:
            break
    return ", ".join(pairs)


def mul_columns(a: int, digit: int) -> str:
    """`7*9=63, 5*9+6=51` for a * digit (a >= 0, 0 <= digit <= 9)."""
    parts, carry = [], 0
    for x in _digits(a):
        total = x * digit + carry
        parts.append(f"{x}*{digit}{f'+{carry}' if carry else ''}={total}")
        carry = total // 10
    return ", ".join(parts)


def add_sub(p: int, op: str, q: int) -> tuple[list[str], int]:
    """Lines for `p op q` with op in + -, any signs; the last line ends with the result."""
    value = p + q if op == "+" else p - q
    head = f"{p} {op} {q}"
    single_digits = abs(p) < 10 and abs(q) < 10
    if (q == 0 or p == 0) and not single_digits:
        return [f"{head} = {value}"], value
    addend = q if op == "+" else -q
    if (p >= 0) == (addend >= 0):
        a, b = abs(p), abs(addend)
        core = f"{a} + {b}" if p >= 0 else f"-({a} + {b})"
        line = head if core == head else f"{head} = {core}"
        return [f"{line}: {add_columns(a, b)}, so {value}"], value
    x, y = (p, -addend) if p >= 0 else (addend, -p)
    line = head if f"{x} - {y}" == head else f"{head} = {x} - {y}"
    line += f", {compare(x, y)}"
    if x < y:
        line += f" so -({y} - {x})"
        x, y = y, x
    return [f"{line}: {sub_columns(x, y)}, so {value}"], value


def _sign_rewrite(p: int, op: str, q: int) -> tuple[str, int, int]:
    """`head[ = -(|p| op |q|)]`, |p|, |q| for * and /: the sign is settled before the digits."""
    head = f"{p} {op} {q}"
    a, b = abs(p), abs(q)
    if (p < 0) != (q < 0):
        return f"{head} = -({a} {op} {b})", a, b
    if p < 0:
        return f"{head} = {a} {op} {b}", a, b
    return head, a, b


def _multiplier_first(a: int, b: int) -> bool:
    """Whether a, not b, is the multiplier: fewer digits, then fewer nonzero digits; b on a tie."""
    def cost(n: int) -> tuple[int, int]:
        return len(str(n)), sum(c != "0" for c in str(n))
    return cost(a) < cost(b)


def multiply(p: int, q: int) -> tuple[list[str], int]:
    """Lines for `p * q`, any signs; the last line ends with the result."""
    value = p * q
    if p == 0 or q == 0:
        return [f"{p} * {q} = 0"], 0
    head, a, b = _sign_rewrite(p, "*", q)
    if a == 1 or b == 1:
        return [f"{head} = {value}"], value
    n, m = (b, a) if _multiplier_first(a, b) else (a, b)
    if m < 10:
        return [f"{head}: {mul_columns(n, m)}, so {value}"], value
    parts = [(d, k) for k, d in enumerate(_digits(m)) if d]
    lines = [head] if head != f"{p} * {q}" else []
    if len(parts) > 1:
        lines.append(f"{a} * {b} = " + " + ".join(f"{n} * {d * 10**k}" for d, k in parts))
    products = []
    for d, k in parts:
        if d == 1:
            line = f"{n} * {10**k} = {n * 10**k}"
        else:
            line = f"{n} * {d}: {mul_columns(n, d)}, so {n * d}"
            if k:
                line += f", {n} * {d * 10**k} = {n * d * 10**k}"
        lines.append(line)
        products.append(n * d * 10**k)
    total = products[0]
    for product in products[1:]:
        sum_lines, total = add_sub(total, "+", product)
        lines += sum_lines
    summary = f"{p} * {q} = {value}"
    if not lines[-1].endswith(summary):
        lines.append(summary)
    return lines, value


def _short_division(a: int, b: int) -> str:
    """`127/18=7 r1, 18/18=1 r0` for a // b, digit by digit from the left, leading zeros skipped."""
    steps, current, started = [], 0, False
    for digit in str(a):
        current = current * 10 + int(digit)
        if not started and current < b:
            continue
        started = True
        quotient, remainder = divmod(current, b)
        steps.append(f"{current}/{b}={quotient} r{remainder}")
        current = remainder
    return ", ".join(steps)


def divide(p: int, q: int) -> tuple[list[str], int]:
    """Lines for `p / q` with Python's floor semantics (q != 0); the last line ends with the result."""
    value = p // q
    head, a, b = _sign_rewrite(p, "/", q)
    quotient, remainder = divmod(a, b)
    if remainder:
        return [f"{head}: {a}/{b}={quotient} r{remainder}, not exact, rounded down {value}"], value
    if p == 0 or b == 1 or a == b or quotient < 10:
        return [f"{head} = {value}"], value
    return [f"{head}: {_short_division(a, b)}, so {value}"], value


def binary(p: int, op: str, q: int) -> tuple[list[str], int]:
    """Lines and value of one binary operation."""
    if op in "+-":
        return add_sub(p, op, q)
    if op == "*":
        return multiply(p, q)
    if op == "/":
        if q == 0:
            raise ValueError(f"division by zero in {p} / {q}")
        return divide(p, q)
    raise ValueError(f"unknown operator {op!r}")


def tokenize(expression: str) -> list[Token]:
    """Tokens of an integer expression; a minus in unary position is folded into the number or `-(`."""
    raw = _TOKEN_RE.findall(expression)
    if "".join(raw) != "".join(expression.split()):
        raise ValueError(f"not an integer expression: {expression!r}")
    tokens: list[Token] = []
    i = 0
    while i < len(raw):
        piece = raw[i]
        unary = piece == "-" and (not tokens or tokens[-1] in ("+", "-", "*", "/", "(", "-("))
        if unary and i + 1 < len(raw) and raw[i + 1] == "(":
            tokens.append("-(")
            i += 2
            continue
        if unary and i + 1 < len(raw) and raw[i + 1].isdigit():
            tokens.append(-int(raw[i + 1]))
            i += 2
            continue
        tokens.append(int(piece) if piece.isdigit() else piece)
        i += 1
    return tokens


def render(tokens: list[Token]) -> str:
    """Tokens joined by single spaces, the way reasoning-gym writes expressions."""
    return " ".join(str(t) for t in tokens)


def _unwrap(tokens: list[Token]) -> list[Token]:
    """Drop parentheses around a single number: `( n )` -> n, `-( n )` -> -n, repeatedly."""
    changed = True
    while changed:
        changed = False
        for i in range(len(tokens) - 2):
            opener, inner, closer = tokens[i], tokens[i + 1], tokens[i + 2]
            if opener in ("(", "-(") and isinstance(inner, int) and closer == ")":
                tokens = tokens[:i] + [inner if opener == "(" else -inner] + tokens[i + 3:]
                changed = True
                break
    return tokens


def _next_operation(tokens: list[Token]) -> int:
    """Index of the operator to apply next: innermost group first, then * / before + -, leftmost."""
    start, end = 0, len(tokens)
    for i, token in enumerate(tokens):
        if token in ("(", "-("):
            start = i + 1
        elif token == ")":
            end = i
            break
    group = range(start + 1, end, 2)
    for i in group:
        if tokens[i] in ("*", "/"):
            return i
    for i in group:
        if tokens[i] in ("+", "-"):
            return i
    raise ValueError(f"malformed expression: {render(tokens)!r}")


def evaluate(tokens: list[Token], rewrite: bool = True) -> tuple[list[str], int]:
    """Lines reducing `tokens` to one integer, and that integer.

    With `rewrite`, the expression is written first and again after each operation (`= ...`, unless
    that is just the number the operation's line ended with). Without it only the operations are
    written: enough for a chain of + and -, whose next term is the one after the last term used.
    """
    lines = [render(tokens)] if rewrite else []
    tokens = _unwrap(list(tokens))
    while len(tokens) > 1:
        i = _next_operation(tokens)
        left, op, right = tokens[i - 1], tokens[i], tokens[i + 1]
        if not (isinstance(left, int) and isinstance(right, int)):
            raise ValueError(f"malformed expression: {render(tokens)!r}")
        step_lines, value = binary(left, str(op), right)
        lines += step_lines
        tokens = _unwrap(tokens[: i - 1] + [value] + tokens[i + 2:])
        if rewrite and (len(tokens) > 1 or tokens[0] != value):
            lines.append(f"= {render(tokens)}")
    if len(tokens) != 1 or not isinstance(tokens[0], int):
        raise ValueError(f"malformed expression: {render(tokens)!r}")
    return lines, tokens[0]
