"""The SQL of leadflow's PostgreSQL recorder, built once for a schema and an events table.

``store/postgres.py`` runs these; here they are only written, each beside why it is written
so (a primary-key probe per key, binary column arrays, a row's compression). ``ddl`` is what
the recorder adds to the library's table set-up, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg.sql import SQL, Composed, Identifier, Literal

from leadflow.store import bookkeeping
from leadflow.store.recorders import META_TABLE, RECORD_IDS_TABLE, TIMERS_TABLE, WRITER_MARK
from leadflow.store.timers import CLOCK_POSITION, TIMERS_EPOCH


@dataclass(frozen=True)
class Statements:
    """Every statement the recorder runs beyond the library's (see the module's doc)."""

    bump_timers_epoch: Composed
    clock_moved_on: Composed
    delete_timers: Composed
    insert_columns: Composed
    insert_record_ids: Composed
    lower_timers: Composed
    select_all_rows: Composed
    select_due: Composed
    select_mark: Composed
    select_meta: Composed
    select_moved_on: Composed
    select_originators: Composed
    select_part_rows: Composed
    select_record_ids: Composed
    select_rows: Composed
    select_timers_epoch: Composed
    upsert_meta: Composed
    upsert_timers: Composed
    write_mark: Composed
    ddl: list[Composed] = field(default_factory=list)

    @classmethod
    def of(cls, schema: str, events_table: str, id_type: str) -> Statements:
        """``id_type``: the datastore's originator id type ("uuid" or "text"), a fixed type
        name, not user input."""
        ddl: list[Composed] = []
        insert_columns = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
        ).format(schema=Identifier(schema),
                 table=Identifier(events_table),
                 id_type=SQL(id_type))  # a fixed type name from the datastore, not user input
        # One primary-key probe per aggregate (LATERAL ... LIMIT 1 keeps the planner from
        # scanning the events table to hash-join a thousand ids).
        select_moved_on = SQL(
            "SELECT c.id FROM unnest(%b::{id_type}[], %b::bigint[]) AS c(id, v), LATERAL "
            "(SELECT 1 FROM {schema}.{table} e WHERE e.originator_id = c.id "
            "AND e.originator_version > c.v LIMIT 1) AS later"
        ).format(schema=Identifier(schema),
                 table=Identifier(events_table), id_type=SQL(id_type))
        ids_table = Identifier(schema, RECORD_IDS_TABLE)
        ddl.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (event_id text PRIMARY KEY, digest bytea NOT NULL, "
            "lead_id uuid)").format(ids_table))
        insert_record_ids = SQL(
            "INSERT INTO {} (event_id, digest, lead_id) "
            "SELECT * FROM unnest(%b::text[], %b::bytea[], %b::uuid[])").format(ids_table)
        # One primary-key probe per id, as for moved-on above. ``event_id = ANY(%s)`` was
        # planned as a scan of the whole table while it was small enough to look cheap (up
        # to ~200,000 ids): 11 ms a batch of 1,000 at 157,612 ids, against 0.9 ms.
        select_record_ids = SQL(
            "SELECT r.event_id, r.digest, r.lead_id FROM unnest(%s::text[]) AS k(id), LATERAL "
            "(SELECT event_id, digest, lead_id FROM {} WHERE event_id = k.id LIMIT 1) AS r"
        ).format(ids_table)
        timers = Identifier(schema, TIMERS_TABLE)
        meta = Identifier(schema, META_TABLE)
        ddl.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (lead_id uuid PRIMARY KEY, "
            "due_at timestamptz NOT NULL)").format(timers))
        ddl.append(SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} (due_at, lead_id)").format(
            Identifier(TIMERS_TABLE + "_due"), timers))
        ddl.append(SQL(
            "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value text NOT NULL)")
            .format(meta))
        upsert_timers = SQL(
            "INSERT INTO {} (lead_id, due_at) SELECT * FROM unnest(%b::uuid[], "
            "%b::timestamptz[]) ON CONFLICT (lead_id) DO UPDATE SET due_at = excluded.due_at"
        ).format(timers)
        # A batch's timers only move rows earlier (recorders.RecordIdIndex): a row left as it
        # is costs the conflict's probe, not a new row version and two index entries.
        lower_timers = SQL(
            "INSERT INTO {t} AS t (lead_id, due_at) SELECT * FROM unnest(%b::uuid[], "
            "%b::timestamptz[]) ON CONFLICT (lead_id) DO UPDATE SET due_at = excluded.due_at "
            "WHERE excluded.due_at < t.due_at"
        ).format(t=timers)
        # The writer mark (recorders.WRITER_MARK): the row keeps ``new`` only when it still
        # holds what the writer expected; otherwise a value that no writer expects.
        write_mark = SQL(
            "INSERT INTO {meta} (key, value) VALUES ({key}, %(new)s) ON CONFLICT (key) DO "
            "UPDATE SET value = CASE WHEN {meta}.value = %(expected)s THEN %(new)s "
            "ELSE %(other)s END").format(meta=meta, key=Literal(WRITER_MARK))
        select_mark = SQL(
            "SELECT (SELECT value FROM {meta} WHERE key = {key}) AS mark, "
            "(SELECT max(notification_id) FROM {events}) AS last").format(
            meta=meta, key=Literal(WRITER_MARK),
            events=Identifier(schema, events_table))
        delete_timers = SQL("DELETE FROM {} WHERE lead_id = ANY(%b::uuid[])"
                                           ).format(timers)
        bump_timers_epoch = SQL(
            "INSERT INTO {meta} AS m (key, value) VALUES ({key}, '1') ON CONFLICT (key) DO "
            "UPDATE SET value = (m.value::bigint + 1)::text").format(
            meta=meta, key=Literal(TIMERS_EPOCH))
        select_timers_epoch = SQL(
            "SELECT value FROM {meta} WHERE key = {key}").format(
            meta=meta, key=Literal(TIMERS_EPOCH))
        select_due = SQL(
            "SELECT due_at, lead_id FROM {} WHERE due_at > %s AND due_at <= %s "
            "AND (due_at, lead_id) > (%s, %s) ORDER BY due_at, lead_id LIMIT %s").format(timers)
        # Inserts a copy of the clock's position row (a key violation: a write conflict)
        # when a lead's next transition is not after that position (timers.check_reads).
        clock_moved_on = SQL(
            "INSERT INTO {meta} (key, value) SELECT m.key, m.value FROM {meta} m "
            "WHERE m.key = {key} AND m.value::timestamptz >= %s").format(
            meta=meta, key=Literal(CLOCK_POSITION))
        select_meta = SQL("SELECT value FROM {} WHERE key = %s").format(meta)
        upsert_meta = SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (key) "
                          "DO UPDATE SET value = excluded.value").format(meta)
        events = Identifier(schema, events_table)
        # The page rows the projector and the auditors read (store.recorders.PageRow).
        rows = ("SELECT notification_id, originator_id::text, originator_version, topic, "
                "state FROM {} ")
        select_rows = SQL(
            rows + "WHERE notification_id >= %s AND topic = ANY(%s) "
            "ORDER BY notification_id LIMIT %s").format(events)
        select_all_rows = SQL(
            rows + "WHERE notification_id >= %s ORDER BY notification_id LIMIT %s"
        ).format(events)
        # A parallel rebuild's part (projections/parallel.py): the rows of the leads whose
        # id's last byte is ``part`` modulo ``parts``, and every row of the shared topics
        # (accounts), up to a fixed last notification id.
        select_part_rows = SQL(
            rows + "WHERE notification_id >= %s AND notification_id <= %s "
            "AND topic = ANY(%s) AND (topic = ANY(%s) "
            "OR get_byte(uuid_send(originator_id), 15) %% %s = %s) "
            "ORDER BY notification_id LIMIT %s").format(events)
        select_originators = SQL(
            "SELECT notification_id, originator_id FROM {} WHERE notification_id BETWEEN %s "
            "AND %s AND topic = ANY(%s) ORDER BY notification_id"
        ).format(events)
        # Rows over ~2 KB (a lead's first event, with its profile: 14 % of the default
        # stream's rows) are compressed by PostgreSQL as they are written; lz4 instead of
        # the default pglz. Inserting 100,000 of the bench's rows: 32.2 against 35.4 us a
        # row. Only where the server has lz4 (PostgreSQL 14+, built with it) and the column
        # does not use it yet: an ALTER TABLE at every start would queue behind writers'
        # table locks. Rows already stored keep their compression; reads handle both.
        ddl.append(SQL(
            "DO $$ BEGIN "
            "IF current_setting('server_version_num')::int >= 140000 "
            "AND EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)) "
            "AND (SELECT attcompression FROM pg_attribute WHERE attrelid = {regclass}::regclass "
            "AND attname = 'state') IS DISTINCT FROM 'l' "
            "THEN ALTER TABLE {events} ALTER COLUMN state SET COMPRESSION lz4; END IF; END $$"
        ).format(events=events, regclass=Literal(
            f'"{schema}"."{events_table}"')))
        ddl.extend(Composed([SQL(statement)]) for statement in bookkeeping.postgres_ddl(schema))
        return cls(
            bump_timers_epoch=bump_timers_epoch, clock_moved_on=clock_moved_on,
            delete_timers=delete_timers, insert_columns=insert_columns,
            insert_record_ids=insert_record_ids, lower_timers=lower_timers,
            select_all_rows=select_all_rows, select_due=select_due, select_mark=select_mark,
            select_meta=select_meta, select_moved_on=select_moved_on,
            select_originators=select_originators, select_part_rows=select_part_rows,
            select_record_ids=select_record_ids, select_rows=select_rows,
            select_timers_epoch=select_timers_epoch, upsert_meta=upsert_meta,
            upsert_timers=upsert_timers, write_mark=write_mark, ddl=ddl)
