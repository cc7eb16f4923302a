"""List pages of a product resource, built from its model and its marshmallow schema alone.

A resource declares its list once::

    CONTACTS = Listing(Contact, ContactSchema, sorts=("name", "created_at"), default_sort="-created_at")

    class ContactQuerySchema(CONTACTS.Args):  # sort, cursor and count, plus the resource's filters
        q = ma.fields.String()

    @blp.route("")
    class Contacts(MethodView):
        @blp.arguments(ContactQuerySchema(), location="query")
        @blp.response(200, ContactSchema(many=True))
        @blp.paginate()
        def get(self, args, pagination_parameters):
            return CONTACTS.page(args, pagination_parameters, where=[Contact.name.ilike("%x%")])

and nothing else: the columns to select and the way each value is written come from the
schema's dump fields (a field's ``attribute`` names a column of the model), so a field added to
the model, the schema and a migration appears in the list as in the single document.

Two ways through a list, both on an index matching the sort (``(sort column, tie-breaker)``,
checked when the listing is declared):

* **cursor** (keyset) pages, whose cost does not grow with the tenant or the depth:
  ``?cursor=`` (empty) starts, and each page names the next one in ``Link: <...>; rel="next"``
  (RFC 8288) and in ``X-Pagination``'s ``next_cursor`` (null on the last page). The cursor is
  opaque: base64url of the last row's sort values, signed (HMAC-SHA256 under ``SECRET_KEY``)
  together with the tenant's schema and the list's name, so a malformed, altered or foreign
  cursor (another tenant's, another list's) is a 400 problem (``invalid_cursor``) that says
  nothing of where it came from. No total unless ``?count=exact``.
* **offset** pages (``?page=``), as before: ``X-Pagination`` carries ``total`` and the page
  numbers. The total is exact when the filtered set ends within :data:`COUNT_CAP` rows past
  the page (the page statement's window count reads ``offset + page_size + COUNT_CAP`` rows at
  most); otherwise the header carries ``total_at_least`` (that bound) instead, with the page
  numbers it can vouch for. ``?count=exact`` counts
  everything (its cost grows with the filtered set). An offset page also links the next page
  as a cursor, so a client following ``Link`` never pays for the depth.

The document of each row is the schema's: every dump field is written as the field's own
``serialize`` would write it. Fields whose value passes through unchanged (text, numbers,
booleans, lists of those, JSON) or through one plain function (``isoformat``, ``str`` of a UUID)
skip marshmallow; any other field, and a schema with dump hooks, goes through marshmallow
(correct, slower). ``tests/test_pagination.py`` holds each rendering against ``Schema.dump``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

import marshmallow as ma
import sqlalchemy as sa
from flask import Response, current_app, g, request
from sqlalchemy import Integer, Select, bindparam, func, select, tuple_, union_all
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from saas import db
from saas.api import Blueprint, QueryArgsSchema
from saas.errors import BadRequest, ErrorCode
from saas.memo import Memo

#: rows past an offset page's end that its window count reads at most: the total is exact when
#: the filtered set ends before ``offset + page_size + COUNT_CAP`` rows, a lower bound otherwise
COUNT_CAP = 100
#: the longest cursor accepted (the longest sort value, a 320-character e-mail, fits many times)
MAX_CURSOR_LENGTH = 2048
#: bytes of the cursor's HMAC-SHA256 that it carries
_MAC_BYTES = 16
_MAC_LABEL = b"saas.pagination.cursor.v1"


class InvalidCursor(BadRequest):
    code, title = ErrorCode.INVALID_CURSOR, "Invalid cursor"


_FOREIGN = (
    "The cursor is not one this list issued (malformed, altered, or issued for another tenant or "
    "list); start again without a cursor."
)


class ListArgs(QueryArgsSchema):
    """Query arguments of every list (the listing's ``Args`` adds its ``sort``)."""

    cursor = ma.fields.String(
        validate=ma.validate.Length(max=MAX_CURSOR_LENGTH),
        metadata={
            "description": "keyset pagination: empty for the first page, then the `next_cursor` of the "
            'previous page (also in its `Link: rel="next"`); not with `page`'
        },
    )
    count = ma.fields.String(
        validate=ma.validate.OneOf(["exact"]),
        metadata={
            "description": "`exact`: X-Pagination's total counts the whole filtered set (slower on "
            f"large sets); by default an offset page counts at most {COUNT_CAP} rows past its end "
            "(then `total_at_least`) and a cursor page does not count"
        },
    )


# --- rendering each field as the schema does ------------------------------------------------------

_STRING_TYPES = (str,)


def _column_python_type(column: Any) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _item_python_type(column: Any) -> type | None:
    item = getattr(column.type, "item_type", None)
    if item is None:
        return None
    try:
        return item.python_type
    except NotImplementedError:
        return None


def _same(field: ma.fields.Field, base: type[ma.fields.Field]) -> bool:
    """``field`` serializes exactly as ``base`` does (it does not override ``_serialize``)."""
    return isinstance(field, base) and type(field)._serialize is base._serialize


#: the value is the document's value (orjson writes it as the field would)
_PASS = object()


def _plain_rendering(field: ma.fields.Field, python_type: type | None, item_type: type | None) -> Any:
    """How ``field`` writes a value of a column of ``python_type`` without marshmallow: ``_PASS``,
    a function of a non-null value, or None (marshmallow must do it)."""
    if _same(field, ma.fields.String) or _same(field, ma.fields.UUID):
        if python_type is str:
            return _PASS
        if python_type is uuid.UUID:
            return str
        return None
    if _same(field, ma.fields.DateTime) and not isinstance(
        field, (ma.fields.NaiveDateTime, ma.fields.AwareDateTime)
    ):
        if python_type is datetime.datetime and (field.format or field.DEFAULT_FORMAT) in ("iso", "iso8601"):
            return datetime.datetime.isoformat
        return None
    if _same(field, ma.fields.Date):
        if python_type is datetime.date and (field.format or field.DEFAULT_FORMAT) in ("iso", "iso8601"):
            return datetime.date.isoformat
        return None
    if _same(field, ma.fields.Integer) and not field.as_string and python_type is int:
        return _PASS
    if _same(field, ma.fields.Boolean) and python_type is bool:
        return _PASS
    if _same(field, ma.fields.List) and python_type is list:
        inner = _plain_rendering(field.inner, item_type, None)
        return _PASS if inner is _PASS else None
    if type(field) is ma.fields.Raw:
        return _PASS
    if _same(field, ma.fields.Dict) and field.key_field is None and field.value_field is None:
        return _PASS if python_type in (dict, object) else None  # object: a JSON column's
    return None


class _Renderer:
    """Writes result rows (columns in the listing's order) as the schema's documents."""

    def __init__(self, schema: ma.Schema, fields: list[tuple[str, str, ma.fields.Field, Any]]):
        # fields: (document key, attribute, field, column), in the select's column order
        self.schema = schema
        self.keys = tuple(key for key, _, _, _ in fields)
        self.attrs = tuple(attr for _, attr, _, _ in fields)
        self.converts: list[tuple[int, str, Callable[[Any], Any]]] = []
        self.serializers: list[tuple[int, str, str, ma.fields.Field]] = []
        for index, (key, attr, field, column) in enumerate(fields):
            plain = _plain_rendering(field, _column_python_type(column), _item_python_type(column))
            if plain is None:
                self.serializers.append((index, key, attr, field))
            elif plain is not _PASS:
                self.converts.append((index, key, plain))
        hooks = schema._hooks  # marshmallow's registry of pre_dump/post_dump processors
        self.with_hooks = any(hooks.get(name) for name in ("pre_dump", "post_dump"))

    def render(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        if self.with_hooks:
            return self.schema.dump([dict(zip(self.attrs, row, strict=False)) for row in rows], many=True)
        keys, converts, serializers = self.keys, self.converts, self.serializers
        documents = []
        for row in rows:
            document = dict(zip(keys, row, strict=False))  # extra columns (sort keys) fall off
            for index, key, convert in converts:
                value = row[index]
                if value is not None:
                    document[key] = convert(value)
            for index, key, attr, field in serializers:
                document[key] = field.serialize(attr, {attr: row[index]})
            documents.append(document)
        return documents


#: (listing, kind, sort, variant) -> the unfiltered page statement: the tenant schema, offset,
#: limit and cursor values are bound per execution, never part of it; a listing lives as long as
#: its module, so its id is never reused while its entries are kept
_STATEMENTS: Memo[tuple[Any, ...], Select] = Memo("pagination.page_statements", maxsize=256)


# --- cursors ---------------------------------------------------------------------------------------

#: SECRET_KEY -> the cursors' HMAC key derived from it (one per deployment; tests make a few)
_MAC_KEYS: Memo[Any, bytes] = Memo("pagination.cursor_keys", maxsize=16)


def _mac_key() -> bytes:
    secret = current_app.config["SECRET_KEY"]
    key = _MAC_KEYS.get(secret)
    if key is None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        key = _MAC_KEYS.put(secret, hmac.new(raw, _MAC_LABEL, hashlib.sha256).digest())
    return key


def _mac(listing: str, payload: bytes) -> bytes:
    scope = f"{g.get('db_tenant_schema') or ''}\x00{listing}\x00".encode()
    return hmac.new(_mac_key(), scope + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _to_json(value: Any) -> Any:
    if isinstance(value, (datetime.date, uuid.UUID, decimal.Decimal)):
        return value.isoformat() if isinstance(value, datetime.date) else str(value)
    return value


def _decoder(column: Any) -> Callable[[Any], Any]:
    """The inverse of :func:`_to_json` for ``column``'s values (``ValueError``/``TypeError`` when
    the value is not one)."""
    python_type = _column_python_type(column)
    timezone = getattr(column.type, "timezone", False)

    def as_datetime(value: Any) -> datetime.datetime:
        parsed = datetime.datetime.fromisoformat(_text(value))
        if (parsed.tzinfo is not None) != bool(timezone):
            raise ValueError("time zone")
        return parsed

    def as_int(value: Any) -> int:
        if type(value) is not int:
            raise TypeError("int")
        return value

    decoders: dict[type, Callable[[Any], Any]] = {
        str: _text,
        uuid.UUID: lambda v: uuid.UUID(_text(v)),
        datetime.datetime: as_datetime,
        datetime.date: lambda v: datetime.date.fromisoformat(_text(v)),
        int: as_int,
        decimal.Decimal: lambda v: decimal.Decimal(_text(v)),
    }
    if python_type not in decoders:
        raise TypeError(f"{column}: a sort column must hold text, numbers, dates or UUIDs")
    return decoders[python_type]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("text")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the listing ------------------------------------------------------------------------------------


class Listing:
    """The list of one product resource: its model (or table), its schema and its sort orders.

    Args:
        model: a mapped class, or a :class:`~sqlalchemy.Table`, of the tenant schema.
        schema: the resource's marshmallow schema (class or instance), the single document's.
        sorts: the columns (attribute names) a client may sort by; each needs an index on
            ``(column, tie_breaker)``.
        default_sort: a sort, ``-`` in front for descending.
        tie_breaker: a unique, non-null column ending every sort (default: the primary key).
        name: the list's name inside cursors (default: the table's name).
        count_cap: see :data:`COUNT_CAP`.
        check_indexes: refuse a sort without its index (on unless the table is not the
            application's, e.g. a test's temporary one).

    Raises:
        TypeError: a dump field does not name a column, or a sort lacks its index.
    """

    def __init__(
        self,
        model: Any,
        schema: type[ma.Schema] | ma.Schema,
        *,
        sorts: Iterable[str],
        default_sort: str,
        tie_breaker: str | None = None,
        name: str | None = None,
        count_cap: int = COUNT_CAP,
        check_indexes: bool = True,
    ) -> None:
        self.table, columns = _columns_of(model)
        self.schema = schema() if isinstance(schema, type) else schema
        self.name = name or self.table.name
        if count_cap < 1:
            raise TypeError("count_cap must be at least 1")
        self.count_cap = count_cap
        if tie_breaker is None:
            primary = list(self.table.primary_key.columns)
            if len(primary) != 1:
                raise TypeError(f"{self.table.name}: name a tie_breaker (the primary key is not one column)")
            tie_breaker = next(key for key, column in columns.items() if column is primary[0])
        self.sorts = tuple(sorts)
        fields = []
        for key, field in self.schema.dump_fields.items():
            attribute = field.attribute or key
            if attribute not in columns:
                raise TypeError(
                    f"{type(self.schema).__name__}.{key}: {attribute!r} is not a column of "
                    f"{self.table.name}; a list page selects columns"
                )
            fields.append((field.data_key or key, attribute, field, columns[attribute]))
        attributes = [attribute for _, attribute, _, _ in fields]
        extra = [a for a in dict.fromkeys([*self.sorts, tie_breaker]) if a not in attributes]
        for attribute in extra:
            if attribute not in columns:
                raise TypeError(f"{self.table.name}: no column {attribute!r} to sort by")
        self._renderer = _Renderer(self.schema, fields)
        if columns[tie_breaker].nullable:
            raise TypeError(f"{self.table.name}.{tie_breaker}: the tie-breaker must be NOT NULL")
        if check_indexes:
            for key in self.sorts:
                if not _has_index(self.table, columns[key], columns[tie_breaker]):
                    raise TypeError(
                        f"{self.table.name}: sorting by {key!r} needs an index on ({columns[key].name}, "
                        f"{columns[tie_breaker].name}) (declare it in the model and its migration)"
                    )
        # the statements read the table under a short alias: the tenant's schema is then named
        # once per statement (SQLAlchemy rewrites each schema-qualified name on every execution)
        self._rows = self.table.alias("r")
        self._adapter = ClauseAdapter(self._rows)
        rows = {attribute: self._rows.corresponding_column(column) for attribute, column in columns.items()}
        self._labels = [*attributes, *extra]
        self._columns = [rows[a].label(a) for a in self._labels]
        self._index = {label: i for i, label in enumerate(self._labels)}
        self.tie_breaker = tie_breaker
        self._tie = rows[tie_breaker]
        self._sort_columns = {key: rows[key] for key in self.sorts}
        self._nullable = {key: columns[key].nullable for key in self.sorts}
        self._decoders = {key: _decoder(columns[key]) for key in self.sorts}
        self._decode_tie = _decoder(columns[tie_breaker])
        if default_sort.lstrip("-") not in self.sorts:
            raise TypeError(f"default_sort {default_sort!r} is not one of {self.sorts}")
        self.default_sort = default_sort
        self.Args: type[ListArgs] = type(
            f"{type(self.schema).__name__}ListArgs",
            (ListArgs,),
            {
                "sort": ma.fields.String(
                    load_default=default_sort,
                    validate=ma.validate.OneOf([*self.sorts, *(f"-{k}" for k in self.sorts)]),
                    metadata={"description": "field name, '-' prefix for descending"},
                ),
            },
        )

    # -- statements -------------------------------------------------------------------------------

    def _order(self, sort: str, source: Any = None) -> list[ColumnElement]:
        key = sort.lstrip("-")
        column = source.c[key] if source is not None else self._sort_columns[key]
        tie = source.c[self.tie_breaker] if source is not None else self._tie
        if sort.startswith("-"):
            return [column.desc(), tie.desc()]
        return [column.asc(), tie.asc()]

    def _statement(self, kind: str, sort: str, where: tuple, variant: Any = None) -> Select:
        """The statement of ``kind``, cached when unfiltered (every value is a bound parameter)."""
        key = (id(self), kind, sort, variant)
        cached = None if where else _STATEMENTS.get(key)
        if cached is not None:
            return cached
        statement = getattr(self, f"_build_{kind}")(sort, where, variant)
        if not where:
            _STATEMENTS.put(key, statement)
        return statement

    def _build_offset(self, sort: str, where: tuple, exact: bool) -> Select:
        """An offset page with its total as a window count: over the whole filtered set when
        ``exact``, else over its first ``window`` rows (the page's end plus the cap)."""
        if exact:
            return (
                select(*self._columns, func.count().over().label("_total"))
                .where(*where)
                .order_by(*self._order(sort))
                .offset(_FIRST)
                .limit(_SIZE)
            )
        head = (
            select(*self._columns).where(*where).order_by(*self._order(sort)).limit(_WINDOW).subquery("head")
        )
        return (
            select(*head.c, func.count().over().label("_total"))
            .order_by(*self._order(sort, head))
            .offset(_FIRST)
            .limit(_SIZE)
        )

    def _build_count(self, sort: str, where: tuple, exact: bool) -> Select:
        if exact:
            return select(func.count()).select_from(self._rows).where(*where)
        head = select(self._tie).where(*where).limit(_WINDOW).subquery("head")
        return select(func.count()).select_from(head)

    def _build_keyset(self, sort: str, where: tuple, after: str | None) -> Select:
        """A cursor page: the first ``size`` rows after the cursor's position (``after``: None
        for the first page, ``"value"`` or ``"null"`` for the kind of sort value it holds).

        Row comparison ``(column, tie) > (:value, :tie)`` is the index's range condition. A
        nullable column's NULLs sort last ascending and first descending (PostgreSQL's default,
        and the index's order), out of reach of a row comparison: the page is then the union of
        two index ranges (the rest of the values, then the NULLs; or the rest of the NULLs, then
        the values), each limited, and ordered again: still two index scans of ``size`` rows."""
        key = sort.lstrip("-")
        column, tie = self._sort_columns[key], self._tie
        descending = sort.startswith("-")
        if after is None:
            ranges: list[Any] = [()]
        else:
            before = tuple_(column, tie) < tuple_(_AFTER_VALUE, _AFTER_TIE)
            beyond = tuple_(column, tie) > tuple_(_AFTER_VALUE, _AFTER_TIE)
            if not self._nullable[key]:
                ranges = [(before if descending else beyond,)]
            elif after == "value":
                ranges = [(before,)] if descending else [(beyond,), (column.is_(None),)]
            else:  # after a NULL
                later = column.is_(None), (tie < _AFTER_TIE) if descending else (tie > _AFTER_TIE)
                ranges = [later, (column.is_not(None),)] if descending else [later]
        order = self._order(sort)
        branches = [select(*self._columns).where(*where, *r).order_by(*order).limit(_SIZE) for r in ranges]
        if len(branches) == 1:
            return branches[0]
        rest = union_all(*branches).subquery("rest")
        return select(*rest.c).order_by(*self._order(sort, rest)).limit(_SIZE)

    # -- the page -----------------------------------------------------------------------------------

    def page(self, args: dict[str, Any], pagination: Any, *, where: Sequence[Any] = ()) -> Response:
        """The response of a list request: ``args`` from :attr:`Args` (or a subclass),
        ``pagination`` flask-smorest's (``page``, ``page_size``), ``where`` the resource's
        filters (SQL expressions on the model's columns)."""
        sort = args.get("sort") or self.default_sort
        if sort.lstrip("-") not in self._sort_columns:  # the schema validated it; never build SQL from input
            raise ValueError(sort)
        exact = args.get("count") == "exact"
        cursor = args.get("cursor")
        conditions = tuple(self._adapter.traverse(condition) for condition in where)  # onto the alias
        connection = db.session().connection()  # the request's unit of work, for Core statements
        size = pagination.page_size
        if cursor is None:
            first = pagination.first_item
            window = first + size + self.count_cap
            statement = self._statement("offset", sort, conditions, exact)
            rows = connection.execute(
                statement, {"page_first": first, "page_size": size, "page_window": window}
            ).all()
            total = rows[0][-1] if rows else None
            if total is None and first > 0:  # past the last row: the window count saw none
                count = self._statement("count", sort, conditions, exact)
                window = self.count_cap
                total = connection.scalar(count, {"page_window": window})
            total = total or 0
            capped = not exact and total >= window
            pagination.item_count = total
            pagination.metadata = self._offset_metadata(pagination.page, size, total, capped, bool(rows))
            more = bool(rows) and (capped or total > first + size)
        else:
            if "page" in request.args:
                raise BadRequest("Send either page or cursor, not both.")
            after, params = self._position(cursor, sort)
            statement = self._statement("keyset", sort, conditions, after)
            rows = connection.execute(statement, {"page_size": size + 1, **params}).all()
            more = len(rows) > size
            rows = rows[:size]
            metadata: dict[str, Any] = {}
            if exact:
                total = connection.scalar(self._statement("count", sort, conditions, True))
                pagination.item_count = metadata["total"] = total
            else:
                pagination.item_count = 0  # not counted (flask-smorest wants a number)
            pagination.metadata = metadata
        next_cursor = self._cursor(sort, rows[-1]) if more and rows else None
        if cursor is not None:
            pagination.metadata["next_cursor"] = next_cursor
        body = current_app.json.dumpb(self._renderer.render(rows)) + b"\n"  # type: ignore[attr-defined]
        response = current_app.response_class(body, mimetype="application/json")
        if next_cursor is not None:
            response.headers["Link"] = f'<{self._next_url(next_cursor)}>; rel="next"'
        return response

    @staticmethod
    def _offset_metadata(page: int, size: int, total: int, capped: bool, found: bool) -> dict[str, Any]:
        """flask-smorest's metadata for an exact total; for a lower bound, the page numbers it
        vouches for (a page past the end has none: it lies somewhere after the bound)."""
        if not capped:
            return Blueprint._make_pagination_metadata(page, size, total)
        metadata: dict[str, Any] = {"total_at_least": total, "first_page": 1}
        if found:
            metadata["page"] = page
            if page > 1:
                metadata["previous_page"] = page - 1
            metadata["next_page"] = page + 1
        return metadata

    def cursor_at(self, sort: str, values: dict[str, Any]) -> str:
        """The cursor of the page after the row holding ``values`` (the sort column's and the
        tie-breaker's, by attribute), for this request's tenant: what a page's ``next_cursor``
        would be."""
        return self._cursor(sort, [values.get(label) for label in self._labels])

    def _cursor(self, sort: str, row: Sequence[Any]) -> str:
        key = sort.lstrip("-")
        values = [sort, _to_json(row[self._index[key]]), _to_json(row[self._index[self.tie_breaker]])]
        payload = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
        return _b64(payload + _mac(self.name, payload))

    def _position(self, cursor: str, sort: str) -> tuple[str | None, dict[str, Any]]:
        """The keyset variant and bound values of ``cursor`` (empty: the first page)."""
        if cursor == "":
            return None, {}
        try:
            raw = _unb64(cursor)
        except (binascii.Error, ValueError):
            raise InvalidCursor(_FOREIGN) from None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(self.name, payload)):
            raise InvalidCursor(_FOREIGN)
        try:
            issued_sort, value, tie = json.loads(payload)
            key = issued_sort.lstrip("-")
            if issued_sort == sort:
                value = None if value is None else self._decoders[key](value)
                tie = self._decode_tie(tie)
        except (ValueError, TypeError, KeyError, AttributeError):  # signed by us, so never expected
            raise InvalidCursor(_FOREIGN) from None
        if issued_sort != sort:
            raise InvalidCursor(
                f"The cursor was issued for sort={issued_sort}; send that sort, or start again "
                "without a cursor."
            )
        return ("null" if value is None else "value"), {"after_value": value, "after_tie": tie}

    @staticmethod
    def _next_url(cursor: str) -> str:
        query = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "cursor")]
        query.append(("cursor", cursor))
        return f"{request.script_root}{request.path}?{urlencode(query)}"


_FIRST = bindparam("page_first", type_=Integer)
_SIZE = bindparam("page_size", type_=Integer)
_WINDOW = bindparam("page_window", type_=Integer)
_AFTER_VALUE = bindparam("after_value")
_AFTER_TIE = bindparam("after_tie")


def _columns_of(model: Any) -> tuple[sa.Table, dict[str, Any]]:
    """The table of ``model`` and its columns by attribute name."""
    if isinstance(model, sa.Table):
        return model, {column.key: column for column in model.columns}
    mapper = sa.inspect(model)
    table = mapper.local_table
    return table, {key: column for key, column in mapper.columns.items() if column.table is table}


def _has_index(table: sa.Table, column: Any, tie: Any) -> bool:
    """Whether an index of ``table`` starts with ``(column, tie)`` (the primary key counts for
    the tie-breaker alone)."""
    if column is tie:
        return True
    for index in table.indexes:
        columns = list(index.columns)
        if len(columns) >= 2 and columns[0] is column and columns[1] is tie:
            return True
    return False
