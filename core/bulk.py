"""Writing many rows with one statement: inserts, and updates by primary key, from columns.

`bulk_create` builds a model instance per row and `bulk_update` a CASE per row and column; at
the matching engine's volume (thousands of rows a second) that Python work, and the planning of
those CASEs, is most of the time spent. These take the values column by column and write them
with one statement: on PostgreSQL an INSERT or UPDATE reading the columns from `unnest` of
arrays, so the statement stays the same size whatever the row count; on SQLite (the embedded
mode, one writer) the ORM's `bulk_create` and an `executemany` UPDATE.

Values must already be what the field stores: ints, strings, booleans, aware datetimes, None.
`constants` give one value for every row. An insert gives every field left out its default.
"""

from collections.abc import Mapping, Sequence
from functools import cache

from django.db import connection, models

_INTEGER_TYPES = frozenset({"bigint", "integer", "smallint"})
_TEXT_TYPES = frozenset({"varchar", "text"})
_STR_ONLY = frozenset({str})


def rows_insert(
    model: type[models.Model],
    *,
    columns: Mapping[str, Sequence],
    constants: Mapping[str, object] | None = None,
    returning_ids: bool = False,
    ignore_conflicts: bool = False,
    returning: Sequence[str] = (),
) -> list:
    """Insert one row per position in `columns`; the new ids, in order, if asked for.

    With `ignore_conflicts` a row that would break a unique constraint is skipped (ON CONFLICT
    DO NOTHING). `returning` names fields to return, one tuple per row written: with skipped
    rows the positions no longer line up, so the caller matches rows by what it asks back.
    """
    if returning and returning_ids:
        raise ValueError("ask for returning_ids or returning, not both")
    count = _row_count(columns)
    if count == 0:
        return []
    constants = _with_defaults(model, columns, constants or {})
    if connection.vendor != "postgresql" and (ignore_conflicts or returning):
        return _insert_rows_one_by_one(model, columns, constants, ignore_conflicts, returning)
    if connection.vendor != "postgresql":
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        created = model.objects.bulk_create([model(**constants, **row) for row in rows])
        return [row.pk for row in created] if returning_ids else []
    columns, constants = _fold_uniform(columns, constants, keep_first=True)
    names, arrays = _arrays(model, columns)
    constant_names = list(constants)
    returned = (model._meta.pk.name,) if returning_ids else tuple(returning)
    sql = _insert_sql(model, tuple(names), tuple(constant_names), returned, ignore_conflicts)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*(constants[name] for name in constant_names), *arrays])
        if returning_ids:
            return [row[0] for row in cursor.fetchall()]
        return cursor.fetchall() if returning else []


def _insert_rows_one_by_one(model, columns, constants, ignore_conflicts, returning) -> list:
    """The embedded database's path: one INSERT a row, so each can say what it wrote."""
    opts = model._meta
    names = [*columns, *constants]
    fields = [opts.get_field(name) for name in names]
    targets = ", ".join(_column(model, name) for name in names)
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    returned = ", ".join(_column(model, name) for name in returning)
    sql = (
        f"INSERT INTO {connection.ops.quote_name(opts.db_table)} ({targets}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(names))}){conflict}"
        + (f" RETURNING {returned}" if returning else "")
    )
    constant_values = [constants[name] for name in constants]
    written = []
    with connection.cursor() as cursor:
        for values in zip(*columns.values(), strict=True):
            params = [
                field.get_db_prep_save(value, connection)
                for field, value in zip(fields, [*values, *constant_values], strict=True)
            ]
            cursor.execute(sql, params)
            if returning:
                row = cursor.fetchone()
                if row is not None:
                    written.append(tuple(row))
    return written


def rows_update(
    model: type[models.Model],
    *,
    ids: Sequence[int],
    columns: Mapping[str, Sequence],
    constants: Mapping[str, object] | None = None,
) -> None:
    """Set, for each id in `ids`, the fields in `columns` to the values at its position."""
    if not ids:
        return
    if _row_count(columns) != len(ids):
        raise ValueError("every column needs one value per id")
    constants = dict(constants or {})
    opts = model._meta
    if connection.vendor != "postgresql":
        fields = [opts.get_field(name) for name in (*columns, *constants)]
        assignments = ", ".join(f"{connection.ops.quote_name(f.column)} = %s" for f in fields)
        sql = (
            f"UPDATE {connection.ops.quote_name(opts.db_table)} SET {assignments} "  # noqa: S608
            f"WHERE {connection.ops.quote_name(opts.pk.column)} = %s"
        )
        constant_values = [
            opts.get_field(name).get_db_prep_save(value, connection)
            for name, value in constants.items()
        ]
        column_fields = [opts.get_field(name) for name in columns]
        rows = [
            [
                *(
                    f.get_db_prep_save(v, connection)
                    for f, v in zip(column_fields, values, strict=True)
                ),
                *constant_values,
                pk,
            ]
            for pk, *values in zip(ids, *columns.values(), strict=True)
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        return
    columns, constants = _fold_uniform({opts.pk.name: ids, **columns}, constants, keep_first=True)
    names, arrays = _arrays(model, columns)
    constant_names = list(constants)
    sql = _update_sql(model, tuple(names), tuple(constant_names))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*(constants[name] for name in constant_names), *arrays, arrays[0]])


def int_array(values) -> str:
    """A PostgreSQL array literal of ints (None as NULL): far cheaper than the driver's adaptation.

    Safe to inline because every element is an int (bools excluded) or None; anything else raises.
    """
    values = values if isinstance(values, list | tuple) else list(values)
    # The type check runs over the whole column at C speed; at the engine's volume a check per
    # element in Python cost more than the statement it feeds.
    types = set(map(type, values))
    if types <= _INT_ONLY:
        return "{" + ",".join(map(str, values)) + "}"
    if not types <= _INT_OR_NONE:
        bad = next(value for value in values if type(value) not in _INT_OR_NONE)
        raise TypeError(f"not an int: {bad!r}")
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


_INT_ONLY = frozenset({int})
_INT_OR_NONE = frozenset({int, type(None)})


def _row_count(columns: Mapping[str, Sequence]) -> int:
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError("columns of different lengths")
    return lengths.pop() if lengths else 0


def _with_defaults(model, columns, constants) -> dict:
    given = set(columns) | set(constants)
    full = dict(constants)
    for field in model._meta.concrete_fields:
        if field.primary_key or field.attname in given or field.name in given:
            continue
        if not field.has_default() and not field.null:
            raise ValueError(f"{model.__name__}.{field.name} needs a value")
        full[field.attname] = field.get_default()
    return full


@cache
def _db_type(model, name: str) -> str:
    # Without the length: varchar(10)[] would cut values short instead of refusing them. Cached
    # like the statements below (one database vendor a process): the engine asks for some fifty
    # columns a batch, and the field's type is formatted anew each time.
    return model._meta.get_field(name).db_type(connection).split("(")[0]


def _fold_uniform(
    columns: Mapping[str, Sequence], constants: Mapping[str, object], *, keep_first: bool
) -> tuple[dict, dict]:
    """Move columns holding one value in every row (a batch's market, its expiry) to constants.

    A constant is one parameter, where an array costs the driver a conversion per element. The
    first column stays an array when `keep_first`: the statement reads its rows from it.
    """
    kept, folded = {}, dict(constants)
    for index, (name, values) in enumerate(columns.items()):
        if index == 0 and keep_first:
            kept[name] = values
            continue
        try:
            distinct = set(values)
        except TypeError:  # unhashable values: leave the column as it is
            distinct = None
        # One value, and one type: True and 1 are equal, yet the column must get what it was given.
        if distinct is not None and len(distinct) == 1 and len(set(map(type, values))) == 1:
            folded[name] = values[0]
        else:
            kept[name] = values
    return kept, folded


def text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of strings: each quoted, its backslashes and quotes escaped.

    Bound as one string and cast (`%s::varchar[]`), it costs one parameter, where the driver
    would adapt a list element by element.
    """
    every_value = "".join(values)
    if "\\" not in every_value and '"' not in every_value:
        # Nothing to escape (references and keys such as "trade:42" never hold either): two
        # joins at C speed instead of two replaces per value.
        return '{"' + '","'.join(values) + '"}' if values else "{}"
    return (
        "{"
        + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
        + "}"
    )


def _arrays(model, columns: Mapping[str, Sequence]) -> tuple[list[str], list]:
    names, arrays = [], []
    for name, values in columns.items():
        names.append(name)
        db_type = _db_type(model, name)
        if db_type in _INTEGER_TYPES:
            arrays.append(int_array(values))
        elif db_type in _TEXT_TYPES and set(map(type, values)) <= _STR_ONLY:
            # The driver adapts a list of strings one element at a time, in Python.
            arrays.append(text_array(values))
        else:
            arrays.append(list(values))
    return names, arrays


def _column(model, name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


@cache
def _insert_sql(
    model, names: tuple, constant_names: tuple, returned: tuple, ignore_conflicts: bool
) -> str:
    quote = connection.ops.quote_name
    targets = ", ".join(_column(model, name) for name in (*names, *constant_names))
    selected = ", ".join(
        [
            *(f"v.c{i}" for i in range(len(names))),
            *(f"%s::{_db_type(model, name)}" for name in constant_names),
        ]
    )
    unnest = ", ".join(f"%s::{_db_type(model, name)}[]" for name in names)
    aliases = ", ".join(f"c{i}" for i in range(len(names)))
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    returning = ""
    if returned:
        returning = " RETURNING " + ", ".join(_column(model, name) for name in returned)
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({targets}) "  # noqa: S608
        f"SELECT {selected} FROM unnest({unnest}) AS v({aliases}){conflict}{returning}"
    )


@cache
def _update_sql(model, names: tuple, constant_names: tuple) -> str:
    quote = connection.ops.quote_name
    assignments = [f"{_column(model, name)} = v.c{i}" for i, name in enumerate(names) if i > 0]
    assignments += [
        f"{_column(model, name)} = %s::{_db_type(model, name)}" for name in constant_names
    ]
    unnest = ", ".join(f"%s::{_db_type(model, name)}[]" for name in names)
    aliases = ", ".join(f"c{i}" for i in range(len(names)))
    key = _column(model, names[0])
    # The keys a second time, as `= ANY`: joined to unnest alone, the planner may hash the whole
    # table rather than look up a thousand keys in its index (at the default random_page_cost it
    # did, for the engine's orders and holds); the array condition is an index scan whatever the
    # table's size and the cost settings.
    return (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {', '.join(assignments)} "  # noqa: S608
        f"FROM unnest({unnest}) AS v({aliases}) WHERE t.{key} = v.c0"
        f" AND t.{key} = ANY(%s::{_db_type(model, names[0])}[])"
    )
