"""A small, safe expression language for watchlist rules, evaluated over a pandas frame.

    expression := term (('+' | '-') term)*
    term       := unary (('*' | '/') unary)*
    unary      := ('-' | '+') unary | NUMBER | COLUMN | '(' expression ')'
    condition  := expression ('<' | '<=' | '>' | '>=' | '=' | '!=') expression

Text is tokenised and parsed into a tree of the nodes below, and the tree is evaluated with numpy:
nothing is ever handed to `eval` or pasted into SQL, and only columns the caller names are readable.
(Python's `ast` would parse a far larger language that would then have to be cut down, and has neither
SQL's `=` nor our error messages: the grammar above is a few dozen lines.)

Values follow SQL over DOUBLE PRECISION, as the old system's queries ran them: a NULL (NaN) operand
makes the result NULL, and a comparison with NULL is not true (`!=` included). Division follows IEEE
floating point as DuckDB does: x / 0 is +-infinity, 0 / 0 is NULL.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd  # frames come from the caller: parsing rules (every task module) needs no pandas


class ExpressionError(ValueError):
    """Text that is not a valid expression; the message names the offending token."""


_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op><=|>=|!=|<>|==|=|<|>|\+|-|\*|/|\(|\)))"
)

_ARITHMETIC: dict[str, Callable] = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_COMPARISONS: dict[str, Callable] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
                                     "=": operator.eq, "!=": operator.ne}
_ALIASES = {"==": "=", "<>": "!="}


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, end
    text: str
    position: int  # 1-based column in the source text


def tokenize(text: str) -> list[Token]:
    tokens, position = [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            tokens.append(Token("end", "", position + 1))
            return tokens
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            bad = re.match(r"\S+", text[position:]).group(0)
            raise ExpressionError(f"unknown token {bad!r} at column {position + 1} of {text!r}")
        kind = match.lastgroup
        value = match.group(kind)
        # A number glued to a name ("3x", "1e") is one bad token, not a number then a name.
        if kind == "number" and match.end() < len(text) and (text[match.end()].isalnum() or text[match.end()] == "_"):
            bad = re.match(r"[\w.]+", text[position:]).group(0)
            raise ExpressionError(f"unknown token {bad!r} at column {position + 1} of {text!r}")
        tokens.append(Token(kind, _ALIASES.get(value, value), match.start(kind) + 1))
        position = match.end()


class Node:
    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def columns(self) -> set[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Node):
    value: float

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.value, dtype=np.float64)

    def columns(self) -> set[str]:
        return set()

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Column(Node):
    name: str

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        # Integer columns with missing values (pandas' nullable Int64) become NaN, i.e. NULL.
        import pandas as pd

        return pd.to_numeric(frame[self.name]).to_numpy(dtype=np.float64, na_value=np.nan)

    def columns(self) -> set[str]:
        return {self.name}

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Negate(Node):
    operand: Node

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        return -self.operand.evaluate(frame)

    def columns(self) -> set[str]:
        return self.operand.columns()

    def __str__(self) -> str:
        return f"-{self.operand}"


@dataclass(frozen=True)
class Arithmetic(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _ARITHMETIC[self.op](self.left.evaluate(frame), self.right.evaluate(frame))

    def columns(self) -> set[str]:
        return self.left.columns() | self.right.columns()

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True)
class Comparison(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        """True where the comparison holds; False where it fails or either side is NULL."""
        left, right = self.left.evaluate(frame), self.right.evaluate(frame)
        known = ~(np.isnan(left) | np.isnan(right))
        with np.errstate(invalid="ignore"):
            return _COMPARISONS[self.op](left, right) & known

    def columns(self) -> set[str]:
        return self.left.columns() | self.right.columns()

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


class _Parser:
    def __init__(self, text: str, columns: Iterable[str], macros: dict[str, Node]):
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.known = set(columns)
        self.macros = macros

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def fail(self, token: Token, expected: str) -> ExpressionError:
        found = "the end" if token.kind == "end" else repr(token.text)
        return ExpressionError(f"expected {expected} but found {found} at column {token.position} of {self.text!r}")

    def expression(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.take().text
            node = Arithmetic(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            op = self.take().text
            node = Arithmetic(op, node, self.unary())
        return node

    def unary(self) -> Node:
        token = self.take()
        if token.kind == "op" and token.text == "-":
            return Negate(self.unary())
        if token.kind == "op" and token.text == "+":
            return self.unary()
        if token.kind == "number":
            return Number(float(token.text))
        if token.kind == "name":
            if token.text in self.macros:
                return self.macros[token.text]
            if token.text not in self.known:
                raise ExpressionError(
                    f"unknown column {token.text!r} at column {token.position} of {self.text!r} "
                    f"(known: {', '.join(sorted(self.known | set(self.macros)))})"
                )
            return Column(token.text)
        if token.kind == "op" and token.text == "(":
            node = self.expression()
            closing = self.take()
            if closing.text != ")" or closing.kind != "op":
                raise self.fail(closing, "')'")
            return node
        raise self.fail(token, "a number, a column or '('")

    def end(self, expected: str) -> None:
        if self.peek().kind != "end":
            raise self.fail(self.peek(), expected)


def parse_expression(text: str, columns: Iterable[str], macros: dict[str, Node] | None = None) -> Node:
    """Arithmetic over `columns` and numbers."""
    parser = _Parser(text, columns, macros or {})
    node = parser.expression()
    parser.end("an operator (+ - * /) or the end")
    return node


def parse_condition(text: str, columns: Iterable[str], macros: dict[str, Node] | None = None) -> Comparison:
    """`expression op expression` with op one of < <= > >= = !=."""
    parser = _Parser(text, columns, macros or {})
    left = parser.expression()
    token = parser.take()
    if token.kind != "op" or token.text not in _COMPARISONS:
        raise parser.fail(token, "a comparison (< <= > >= = !=)")
    right = parser.expression()
    parser.end("an operator (+ - * /) or the end")
    return Comparison(token.text, left, right)
