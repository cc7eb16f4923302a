"""SCIM filters (RFC 7644 section 3.4.2.2) translated to SQLAlchemy ``WHERE`` clauses.

The filter is parsed by scim2-models (:class:`scim2_models.ScimFilter`, its syntax tree in
:mod:`scim2_models.path`); this module walks that tree against an :data:`AttributeMap`, the
attributes a resource type can be filtered and sorted on, each bound to a column (or an
``EXISTS`` for a multi-valued attribute such as a group's ``members``). Supported: ``eq``,
``ne``, ``co``, ``sw``, ``ew``, ``gt``, ``ge``, ``lt``, ``le``, ``pr``, ``and``, ``or``,
``not`` and value paths (``emails[type eq "work" and value co "@example.com"]``). String
comparisons are case-insensitive unless the attribute is ``caseExact`` (RFC 7643 section
2.2); ``LIKE`` wildcards in a value are escaped. An attribute outside the map, a malformed
filter or a value of the wrong type is 400 ``invalidFilter`` (RFC 7644 section 3.12).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scim2_models import InvalidFilterException, SCIMException, ScimFilter
from scim2_models.path import AttrPath, CompareOperator, Comparison, LogicalExpr, Not, Present, ValuePath
from scim2_models.path.expressions import LogicalOperator
from sqlalchemy import String, and_, cast, false, func, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["Attr", "AttributeMap", "sort_column", "where"]


@dataclass(frozen=True)
class Attr:
    """One filterable attribute: ``kind`` is ``string``, ``uuid``, ``boolean``, ``datetime``,
    or ``exists`` (``build`` makes the clause from the operator and value); ``constant`` is a
    value every resource has (``emails.type`` is ``work``)."""

    column: Any = None
    kind: str = "string"
    case_exact: bool = False
    build: Callable[[CompareOperator | None, Any], ColumnElement[bool]] | None = None
    constant: Any = None
    sortable: bool = True


#: lowercased attribute path (``name.givenname``, ``meta.created``) -> attribute
AttributeMap = dict[str, Attr]


def _key(path: AttrPath, prefix: str = "") -> str:
    name = path.attr if path.sub_attr is None else f"{path.attr}.{path.sub_attr}"
    key = f"{prefix}{name}".lower()
    if path.uri and not path.uri.lower().endswith(("core:2.0:user", "core:2.0:group")):
        key = f"{path.uri.lower()}:{key}"
    return key


def _lookup(attrs: AttributeMap, path: AttrPath, prefix: str = "") -> Attr:
    attr = attrs.get(_key(path, prefix))
    if attr is None:
        raise InvalidFilterException(detail=f"The attribute {path} cannot be filtered on here.")
    return attr


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _compare_string(attr: Attr, op: CompareOperator, value: Any) -> ColumnElement[bool]:
    if not isinstance(value, str):
        raise InvalidFilterException(detail=f"Expected a string, got {value!r}.")
    col = attr.column if attr.case_exact else func.lower(attr.column)
    val = value if attr.case_exact else value.lower()
    if op is CompareOperator.eq:
        return col == val
    if op is CompareOperator.ne:
        return or_(attr.column.is_(None), col != val)
    if op is CompareOperator.co:
        return col.like(f"%{_escape(val)}%", escape="\\")
    if op is CompareOperator.sw:
        return col.like(f"{_escape(val)}%", escape="\\")
    if op is CompareOperator.ew:
        return col.like(f"%{_escape(val)}", escape="\\")
    return {
        CompareOperator.gt: col > val,
        CompareOperator.ge: col >= val,
        CompareOperator.lt: col < val,
        CompareOperator.le: col <= val,
    }[op]


def _compare(attr: Attr, op: CompareOperator, value: Any) -> ColumnElement[bool]:
    if attr.build is not None:
        return attr.build(op, value)
    if attr.constant is not None:
        return true() if _constant_matches(attr.constant, op, value) else false()
    if attr.kind == "uuid":
        if op not in (CompareOperator.eq, CompareOperator.ne):
            return _compare_string(Attr(cast(attr.column, String), case_exact=True), op, value)
        try:
            parsed = uuid.UUID(str(value))
        except ValueError:
            return false() if op is CompareOperator.eq else true()
        return attr.column == parsed if op is CompareOperator.eq else attr.column != parsed
    if attr.kind == "boolean":
        if op not in (CompareOperator.eq, CompareOperator.ne) or not isinstance(value, bool):
            raise InvalidFilterException(detail="A boolean attribute takes eq or ne with true or false.")
        return attr.column == value if op is CompareOperator.eq else attr.column != value
    if attr.kind == "datetime":
        if op in (CompareOperator.co, CompareOperator.sw, CompareOperator.ew):
            raise InvalidFilterException(detail="A dateTime attribute takes eq, ne, gt, ge, lt or le.")
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidFilterException(
                detail=f"Not a dateTime (RFC 7643 section 2.3.5): {value!r}."
            ) from None
        col = attr.column
        return {
            CompareOperator.eq: col == when,
            CompareOperator.ne: col != when,
            CompareOperator.gt: col > when,
            CompareOperator.ge: col >= when,
            CompareOperator.lt: col < when,
            CompareOperator.le: col <= when,
        }[op]
    return _compare_string(attr, op, value)


def _constant_matches(constant: Any, op: CompareOperator, value: Any) -> bool:
    text, val = str(constant).lower(), str(value).lower()
    return {
        CompareOperator.eq: text == val,
        CompareOperator.ne: text != val,
        CompareOperator.co: val in text,
        CompareOperator.sw: text.startswith(val),
        CompareOperator.ew: text.endswith(val),
        CompareOperator.gt: text > val,
        CompareOperator.ge: text >= val,
        CompareOperator.lt: text < val,
        CompareOperator.le: text <= val,
    }[op]


def _present(attr: Attr) -> ColumnElement[bool]:
    if attr.build is not None:
        return attr.build(None, None)
    if attr.constant is not None:
        return true()
    if attr.kind == "string":
        return and_(attr.column.is_not(None), attr.column != "")
    return attr.column.is_not(None)


def _clause(node: Any, attrs: AttributeMap, prefix: str = "") -> ColumnElement[bool]:
    if isinstance(node, LogicalExpr):
        terms = [_clause(t, attrs, prefix) for t in node.terms]
        return and_(*terms) if node.op == LogicalOperator.and_ else or_(*terms)
    if isinstance(node, Not):
        return not_(_clause(node.expr, attrs, prefix))
    if isinstance(node, Present):
        return _present(_lookup(attrs, node.attr_path, prefix))
    if isinstance(node, Comparison):
        path = node.attr_path
        attr = attrs.get(_key(path, prefix))
        if attr is None and path.sub_attr is None:  # ``emails eq "x"``: the value sub-attribute
            attr = attrs.get(_key(AttrPath(path.attr, "value", path.uri), prefix))
        if attr is None:
            raise InvalidFilterException(detail=f"The attribute {path} cannot be filtered on here.")
        return _compare(attr, node.op, node.value)
    if isinstance(node, ValuePath):
        if node.attr_path.sub_attr is not None or prefix:
            raise InvalidFilterException(detail="Value paths do not nest.")
        return _clause(node.val_filter, attrs, prefix=f"{node.attr_path.attr}.")
    raise InvalidFilterException(detail="Unsupported filter expression.")


def where(expression: str, attrs: AttributeMap) -> ColumnElement[bool]:
    """The ``WHERE`` clause of the filter ``expression`` on a resource type's ``attrs``.

    Raises:
        InvalidFilterException: 400 ``invalidFilter``: bad syntax, an attribute not in
            ``attrs``, an operator or a value the attribute does not take.
    """
    if len(expression) > 4096:
        raise InvalidFilterException(detail="The filter is too long (at most 4096 characters).")
    try:
        parsed = ScimFilter(expression)
    except SCIMException as exc:
        raise InvalidFilterException(detail=f"Malformed filter: {exc}") from None
    except Exception as exc:  # the grammar's own errors
        raise InvalidFilterException(detail=f"Malformed filter: {exc}") from None
    return _clause(parsed.ast, attrs)


def sort_column(name: str, attrs: AttributeMap) -> Any:
    """The column ``sortBy`` names (RFC 7644 section 3.4.2.3).

    Raises:
        InvalidFilterException: an attribute that cannot be sorted on (400 ``invalidFilter``,
            as there is no dedicated scimType).
    """
    try:
        path = ScimFilter(f"{name} pr").ast
    except Exception:
        raise InvalidFilterException(detail=f"Cannot sort by {name!r}.") from None
    assert isinstance(path, Present)
    attr = attrs.get(_key(path.attr_path)) or (
        attrs.get(_key(AttrPath(path.attr_path.attr, "value", path.attr_path.uri)))
        if path.attr_path.sub_attr is None
        else None
    )
    if attr is None or not attr.sortable or attr.column is None:
        raise InvalidFilterException(detail=f"Cannot sort by {name!r}.")
    if attr.kind == "string" and not attr.case_exact:
        return func.lower(attr.column)
    return attr.column
