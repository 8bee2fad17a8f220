"""Model instances from the rows of a hand-written query, as the ORM would have built them.

A query the ORM compiles on every call can cost more in Python than in the database: the API
key lookup that every API request runs joins four tables, and compiling it was a few
milliseconds a request. `ModelColumns` writes a model's select list once, and turns its slice of
a result row back into an instance through the same converters the ORM applies (SQLite's
datetimes and booleans, JSON fields), so the rest of the code sees ordinary model instances.
"""

from collections.abc import Sequence

from django.db import models


class ModelColumns:
    """Every concrete column of `model` under a table alias, and instances from their values."""

    def __init__(self, model: type[models.Model], alias: str):
        self.model = model
        self.alias = alias
        self.fields = model._meta.concrete_fields
        self.attnames = [field.attname for field in self.fields]
        self._converters: dict[str, list] = {}  # by connection alias

    def __len__(self) -> int:
        return len(self.fields)

    def select(self, connection) -> str:
        """The select list: alias.column for every concrete field, in field order."""
        quote = connection.ops.quote_name
        return ", ".join(f"{quote(self.alias)}.{quote(field.column)}" for field in self.fields)

    def instance(self, values: Sequence, connection) -> models.Model:
        """The instance whose columns are `values`, in the order of `select`."""
        converters = self._converters.get(connection.alias)
        if converters is None:
            converters = self._converters[connection.alias] = [
                self._field_converters(field, connection) for field in self.fields
            ]
        converted = []
        for value, (column, functions) in zip(values, converters, strict=True):
            for function in functions:
                value = function(value, column, connection)
            converted.append(value)
        return self.model.from_db(connection.alias, self.attnames, converted)

    def _field_converters(self, field, connection) -> tuple:
        column = field.get_col(self.alias)
        return column, connection.ops.get_db_converters(column) + column.get_db_converters(
            connection
        )


def select_list(parts: Sequence[ModelColumns], connection) -> str:
    """The select lists of `parts`, one after the other."""
    return ", ".join(part.select(connection) for part in parts)


def instances(row: Sequence, parts: Sequence[ModelColumns], connection) -> list:
    """One instance per part from a row of `select_list(parts)`, in order.

    A part whose columns are all NULL (the missing side of a LEFT JOIN) gives None.
    """
    found, start = [], 0
    for part in parts:
        values = row[start : start + len(part)]
        start += len(part)
        is_missing = all(value is None for value in values)
        found.append(None if is_missing else part.instance(values, connection))
    return found
