#!/usr/bin/env python3
"""PostgreSQL's own CPU per audit row, by the way a batch goes in: binary
`COPY … FROM STDIN` (what the audit writer sends), `INSERT … SELECT FROM
unnest(…) ON CONFLICT DO NOTHING` (what it sent before, and what it falls back
to when a COPY is refused, and what a journal found at start-up is replayed
with), and the same INSERT without ON CONFLICT.

Works in a scratch database it drops, with the audit table as Squad's
migrations (migrations/postgres) make it. Each round, for each way in turn (the
order reversed every other round): empty the table, checkpoint, then --batches
batches of --rows rows, the same rows for every way, in one session whose
on-CPU time is read from the server's /proc/<pid>/schedstat before and after
(so the server must run on this machine). synchronous_commit is off for the
session, so that the figure is CPU, not waiting for the disk. Prints each way's
median µs per row and every round's figure.

Needs psycopg 3 (`pip install "psycopg[binary]"`) and DATABASE_URL.
Usage: bench/pg_copy.py [--rounds 5] [--batches 100] [--rows 1000]
"""

import argparse
import os
import pathlib
import statistics
import uuid

import psycopg

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--batches", type=int, default=100)
parser.add_argument("--rows", type=int, default=1000)
args = parser.parse_args()

base = os.environ.get("DATABASE_URL")
if not base:
    raise SystemExit("DATABASE_URL must name a PostgreSQL server on this machine")
scratch = f"squad_pg_copy_{os.getpid()}"
url = base.rsplit("/", 1)[0] + "/" + scratch
migrations = sorted((pathlib.Path(__file__).resolve().parent.parent / "migrations" / "postgres").glob("*.sql"))

admin = psycopg.connect(base, autocommit=True)
admin.execute(f"CREATE DATABASE {scratch}")
try:
    conn = psycopg.connect(url, autocommit=True)
    for m in migrations:
        conn.execute(m.read_text())
    columns = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'audit_log' ORDER BY ordinal_position"
    ).fetchall()
    types = {"text": "text", "bigint": "int8", "double precision": "float8", "boolean": "bool"}
    names = [c for c, _ in columns]
    kinds = [types[t] for _, t in columns]
    conn.execute("SET synchronous_commit = off")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def on_cpu_ns():
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])

    # Rows shaped as the writer's: a served chat, ids UUIDv7-like (time first).
    ms = 1_780_000_000_000
    batches = []
    for b in range(args.batches):
        rows = []
        for i in range(args.rows):
            ms += 1
            rid = f"{ms:012x}"[:8] + "-" + f"{ms:012x}"[8:] + "-7abc-8def-" + uuid.uuid4().hex[:12]
            row = {
                "id": rid, "request_id": rid, "ts_ms": ms, "key_id": "key_0123456789abcdef",
                "client_addr": "127.0.0.1", "method": "POST", "route": "/v1/chat/completions",
                "agent": None, "user_id": None, "conversation_id": None, "status": 200, "error_kind": None,
                "attempts": '[{"provider":"groq","model":"openai/gpt-oss-20b","outcome":"ok","latency_ms":1.2}]',
                "provider": "groq", "model": "openai/gpt-oss-20b", "tokens_in": 12, "tokens_out": 34,
                "cost_usd": 0.0001, "latency_ms": 1.2, "upstream_ms": 1.0, "overhead_ms": 0.2,
                "streamed": False, "cancelled": False,
                "prompt": '[{"role":"user","content":"Say hello to the squad, please."}]',
                "response": "Hello from the simulated upstream.", "metadata": None,
            }
            rows.append([row[n] for n in names])
        batches.append(rows)

    insert = (
        f"INSERT INTO audit_log ({', '.join(names)}) SELECT * FROM unnest("
        + ", ".join(f"%s::{k}[]" for k in kinds)
        + ")"
    )
    copy = f"COPY audit_log ({', '.join(names)}) FROM STDIN (FORMAT binary)"

    def by_insert(rows, on_conflict):
        cols = [list(c) for c in zip(*rows)]
        conn.execute(insert + (" ON CONFLICT DO NOTHING" if on_conflict else ""), cols, binary=True, prepare=True)

    def by_copy(rows):
        with conn.cursor() as cur, cur.copy(copy) as cp:
            cp.set_types(kinds)
            for r in rows:
                cp.write_row(r)

    ways = {
        "copy_binary": by_copy,
        "insert_on_conflict": lambda rows: by_insert(rows, True),
        "insert": lambda rows: by_insert(rows, False),
    }
    figures = {w: [] for w in ways}
    total = args.batches * args.rows
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for w in order:
            conn.execute("TRUNCATE audit_log")
            conn.execute("CHECKPOINT")
            start = on_cpu_ns()
            for rows in batches:
                ways[w](rows)
            spent = on_cpu_ns() - start
            count = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
            if count != total:
                raise SystemExit(f"{w}: {count} rows, expected {total}")
            figures[w].append(spent / 1000 / total)
    print(f"{'way':<20} {'median µs/row':>14}   rounds ({args.batches} batches of {args.rows} rows)")
    for w, f in figures.items():
        print(f"{w:<20} {statistics.median(f):14.2f}   {' '.join(f'{x:.2f}' for x in f)}")
finally:
    admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
