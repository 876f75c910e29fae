"""Migrate: bring a journal an older batchrun wrote up to this version's columns.

Columns are only ever added, at the end of their table, so an older journal is the newer one
without them. A writer adds them in place when it opens the journal (`ALTER TABLE ADD COLUMN`,
and the `all_results` view, which names its columns, made again). A reader (`status`, `export`,
`report`) must not write: it lays temporary views over the tables that lack a column, showing
it as NULL; SQLite finds a `temp` object before a `main` one of the same name, so every query
reads the same names either way.
"""

from __future__ import annotations

import sqlite3

# The columns added since a table first appeared, by table: (name, SQL type), in table order.
_RESULT_ADDED = (("endpoint", "TEXT"), ("cached_tokens", "INTEGER"),
                 ("reasoning_tokens", "INTEGER"), ("provider_cost", "REAL"))
ADDED: dict[str, tuple[tuple[str, str], ...]] = {
    "results": _RESULT_ADDED,
    "log": _RESULT_ADDED,
    "timeline": (("endpoint", ""),),
}


def missing(db: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """The added columns each existing table of the journal lacks (tables lacking none left out)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for table, added in ADDED.items():
        names = {row[1] for row in db.execute(f"PRAGMA main.table_info({table})")}
        lacking = [column for column in added if column[0] not in names]
        if names and lacking:
            found[table] = lacking
    return found


def upgrade(db: sqlite3.Connection, view: str) -> bool:
    """A writer's open: add what the tables lack and make the `all_results` view again (`view`:
    its body, `SELECT ...`), in one transaction; whether anything changed."""
    if not missing(db):
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        lacking = missing(db)  # again inside the transaction: another writer may have done it
        for table, columns in lacking.items():
            for name, kind in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}".rstrip())
        if "results" in lacking or "log" in lacking:
            db.execute("DROP VIEW IF EXISTS all_results")
            db.execute(f"CREATE VIEW all_results AS {view}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True


def overlay(db: sqlite3.Connection, view: str) -> None:
    """A reader's open: temporary views of the tables that lack columns, with them as NULL, and
    an `all_results` over those (`view`: its body) when `results` or `log` needed one."""
    lacking = missing(db)
    for table, columns in lacking.items():
        nulls = ", ".join(f"NULL AS {name}" for name, _ in columns)
        db.execute(f"CREATE TEMP VIEW {table} AS SELECT *, {nulls} FROM main.{table}")
    has_log = db.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'log'").fetchone()
    if has_log and ("results" in lacking or "log" in lacking):
        db.execute(f"CREATE TEMP VIEW all_results AS {view}")
