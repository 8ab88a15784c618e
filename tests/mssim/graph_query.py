"""OData query options of the Graph simulator: `$filter` expressions, `$expand` of extended properties, and the
identifiers of single-value extended properties.

Documented syntax reproduced (https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get):

* `singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{value}')`, the lambda keywords in any case
  (`any(ep:ep/Id eq ... and contains(ep/Value, 'green'))` is a documented example), with `eq`/`ne`/`contains`/
  `startswith` on string values and `cast(ep/value, Edm.Int32) eq 12` for numeric ones.
* "Filtering the string name (Name) in the id of an extended property is case-sensitive. Filtering the value property
  of an extended property is case-insensitive." The property type keyword, the GUID and a hex tag are compared without
  regard to case (`Integer 0x0E08` and `integer 0x0e08` are one property).
* `$expand=singleValueExtendedProperties($filter=id eq '{id}')`, several ids joined with `or`.
* Plain property comparisons such as `receivedDateTime ge 2024-01-01T00:00:00Z` (also the only `$filter` a message
  delta query accepts, https://learn.microsoft.com/en-us/graph/api/message-delta).

Anything else is refused the way Graph refuses a filter it cannot evaluate: 400 `ErrorInvalidUrlQueryFilter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PropKey = tuple[str, str | None, int | str]


def prop_key(prop_id: str) -> PropKey:
    """Normalized identity of an extended property id: `{type} 0x{tag}`, `{type} {guid} Name {name}` or
    `{type} {guid} Id 0x{id}`. Type, GUID and numbers are case-insensitive; a Name is case-sensitive."""
    text = prop_id.strip()
    m = re.fullmatch(r"(\w+)\s+0x([0-9a-fA-F]+)", text)
    if m:
        return (m.group(1).lower(), None, int(m.group(2), 16))
    m = re.fullmatch(r"(\w+)\s+\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?"
                     r"\s+(name|id)\s+(.+)", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid extended property id: {prop_id!r}")
    kind, value = m.group(3).lower(), m.group(4).strip()
    if kind == "id":
        number = int(value, 16) if value.lower().startswith("0x") else int(value)
        return (m.group(1).lower(), m.group(2).lower(), number)
    return (m.group(1).lower(), m.group(2).lower(), "name:" + value)


class FilterError(ValueError):
    """A `$filter` the simulator (and, for the shapes it reproduces, Graph) cannot evaluate."""


class PropId(str):
    """An extended property's id as seen by a filter: `eq` compares normalized ids, not raw strings."""

    __slots__ = ()

    def same(self, other: str) -> bool:
        try:
            return prop_key(self) == prop_key(other)
        except ValueError:
            return False


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^']|'')*')
  | (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_$@][A-Za-z0-9_./$@]*)
  | (?P<punct>[(),:])
)""", re.VERBOSE)

_COMPARE = ("eq", "ne", "gt", "ge", "lt", "le")


@dataclass
class _Tok:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot parse the filter near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append(_Tok(kind, m.group(kind)))
        pos = m.end()
    return out


Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of the filter")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text.lower() != text:
            raise FilterError(f"expected {text!r}, found {tok.text!r}")

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind == "name" and tok.text.lower() in words:
            self.i += 1
            return tok.text.lower()
        return None

    def parse(self) -> Node:
        node = self.expr()
        extra = self.peek()
        if extra is not None:
            raise FilterError(f"unexpected {extra.text!r}")
        return node

    def expr(self) -> Node:
        node = self.conj()
        while self.keyword("or"):
            node = ("or", node, self.conj())
        return node

    def conj(self) -> Node:
        node = self.unary()
        while self.keyword("and"):
            node = ("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.keyword("not"):
            return ("not", self.unary())
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.next()
            node = self.expr()
            self.expect(")")
            return node
        if tok is not None and tok.kind == "name" and tok.text.lower().endswith("/any"):
            self.next()
            self.expect("(")
            var = self.next()
            if var.kind != "name":
                raise FilterError("expected a lambda variable")
            self.expect(":")
            body = self.expr()
            self.expect(")")
            return ("any", tok.text[:-4], var.text, body)
        if tok is not None and tok.kind == "name" and tok.text.lower() in ("contains", "startswith", "endswith"):
            self.next()
            self.expect("(")
            left = self.operand()
            self.expect(",")
            right = self.operand()
            self.expect(")")
            return ("func", tok.text.lower(), left, right)
        left = self.operand()
        op = self.keyword(*_COMPARE)
        if op is None:
            raise FilterError("expected a comparison operator")
        return ("cmp", op, left, self.operand())

    def operand(self) -> Node:
        tok = self.next()
        if tok.kind == "str":
            return ("lit", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "dt":
            return ("lit", parse_datetime(tok.text))
        if tok.kind == "num":
            return ("lit", float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "guid":
            return ("lit", tok.text.lower())
        if tok.text == "(":
            inner = self.operand()
            self.expect(")")
            return inner
        if tok.kind == "name":
            low = tok.text.lower()
            if low in ("true", "false"):
                return ("lit", low == "true")
            if low == "null":
                return ("lit", None)
            if low == "cast":
                self.expect("(")
                inner = self.operand()
                self.expect(",")
                typ = self.next()
                self.expect(")")
                return ("cast", inner, typ.text.lower())
            return ("prop", tok.text)
        raise FilterError(f"unexpected {tok.text!r}")


def parse_filter(text: str) -> Node:
    return _Parser(text).parse()


def parse_datetime(text: str) -> datetime:
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FilterError(f"invalid date/time {text!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Resolver = Callable[[str], Any]


def _cast(value: Any, typ: str) -> Any:
    if value is None:
        return None
    try:
        if typ in ("edm.int32", "edm.int64", "edm.int16"):
            return int(value)
        if typ in ("edm.double", "edm.single", "edm.decimal"):
            return float(value)
        if typ == "edm.boolean":
            return str(value).lower() == "true"
        if typ == "edm.datetimeoffset":
            return value if isinstance(value, datetime) else parse_datetime(str(value))
        if typ == "edm.guid":
            return str(value).lower()
        if typ == "edm.string":
            return str(value)
    except (TypeError, ValueError) as exc:
        raise FilterError(f"cannot cast {value!r} to {typ}") from exc
    raise FilterError(f"unsupported cast to {typ}")


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, PropId) and isinstance(right, str) and op in ("eq", "ne"):
        return left.same(right) == (op == "eq")
    if isinstance(left, str) and isinstance(right, str):
        left, right = left.lower(), right.lower()
    elif isinstance(left, datetime) and isinstance(right, str):
        right = parse_datetime(right)
    elif isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, str):
        try:
            right = float(right)
        except ValueError:
            return op == "ne"
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])
    except TypeError as exc:
        raise FilterError(f"cannot compare {left!r} with {right!r}") from exc


def evaluate(node: Node, resolve: Resolver, collections: Callable[[str], list[Any]]) -> bool:
    """Evaluate a parsed filter. `resolve(path)` gives a property's value (raise FilterError for an unknown one);
    `collections(path)` gives the items of a collection for `path/any(...)` (dicts with lowercase keys, or scalars)."""

    def value(operand: Node, env: dict[str, Any]) -> Any:
        kind = operand[0]
        if kind == "lit":
            return operand[1]
        if kind == "cast":
            return _cast(value(operand[1], env), operand[2])
        path: str = operand[1]
        head, _, rest = path.partition("/")
        for var, item in env.items():
            if head.lower() == var.lower():
                if not rest:
                    return item
                if isinstance(item, dict):
                    key = rest.lower()
                    if key not in item:
                        raise FilterError(f"unknown property {path!r}")
                    return item[key]
                raise FilterError(f"{var} has no property {rest!r}")
        return resolve(path)

    def test(n: Node, env: dict[str, Any]) -> bool:
        kind = n[0]
        if kind == "and":
            return test(n[1], env) and test(n[2], env)
        if kind == "or":
            return test(n[1], env) or test(n[2], env)
        if kind == "not":
            return not test(n[1], env)
        if kind == "cmp":
            return _compare(n[1], value(n[2], env), value(n[3], env))
        if kind == "func":
            left, right = value(n[2], env), value(n[3], env)
            if not isinstance(left, str) or not isinstance(right, str):
                return False
            left, right = left.lower(), right.lower()
            if n[1] == "contains":
                return right in left
            if n[1] == "startswith":
                return left.startswith(right)
            return left.endswith(right)
        if kind == "any":
            items = collections(n[1])
            return any(test(n[3], {**env, n[2]: item}) for item in items)
        raise FilterError(f"unsupported expression {kind}")

    result = test(node, {})
    return result


@dataclass
class Expand:
    """One `$expand` entry: a navigation property and its optional nested `$filter`."""

    name: str
    filter: Node | None = None


def parse_expand(text: str) -> list[Expand]:
    """`singleValueExtendedProperties($filter=id eq 'x' or id eq 'y'),attachments` -> entries."""
    out: list[Expand] = []
    pos = 0
    while pos < len(text):
        m = re.match(r"\s*([A-Za-z]+)\s*", text[pos:])
        if not m:
            raise FilterError(f"cannot parse $expand near {text[pos:pos + 20]!r}")
        name = m.group(1)
        pos += m.end()
        flt: Node | None = None
        if pos < len(text) and text[pos] == "(":
            depth, end, quoted = 0, pos, False
            for end in range(pos, len(text)):
                ch = text[end]
                if ch == "'":
                    quoted = not quoted
                elif not quoted and ch == "(":
                    depth += 1
                elif not quoted and ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
            options = text[pos + 1:end]
            pos = end + 1
            for option in options.split(";"):
                key, _, val = option.partition("=")
                if key.strip().lower() == "$filter":
                    flt = parse_filter(val)
                elif key.strip():
                    raise FilterError(f"unsupported $expand option {key.strip()!r}")
        out.append(Expand(name, flt))
        rest = text[pos:].lstrip()
        if rest.startswith(","):
            pos = len(text) - len(rest) + 1
        elif rest:
            raise FilterError(f"cannot parse $expand near {rest[:20]!r}")
        else:
            break
    return out
