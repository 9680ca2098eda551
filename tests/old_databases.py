"""ICM Studio database files as versions 1 to 5 wrote them: 1..3 with no marker, only their exact
schema; 4 with the marker table; none before 5 with its param_changes table (a set_param event's
values lived in its note); none with the events.tokens_reused column of version 6.

The schema is copied from the first release (commit 4698c35, icm_engine/store.py) and upgraded
with the statements versions 2 to 5 ran, so the tests check recognition and migration against
what users' files really hold, not against the current code's idea of them.
"""
from __future__ import annotations

import json

import duckdb

VERSION_1 = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE SEQUENCE IF NOT EXISTS dataset_ids START 1;
CREATE SEQUENCE IF NOT EXISTS run_ids START 1;
CREATE SEQUENCE IF NOT EXISTS eval_ids START 1;
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, task_json VARCHAR NOT NULL,
    source VARCHAR NOT NULL, n_examples INTEGER NOT NULL, has_gold BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS examples (
    dataset_id INTEGER NOT NULL, idx INTEGER NOT NULL, uid VARCHAR NOT NULL,
    fields_json VARCHAR NOT NULL, group_key VARCHAR, cons_key VARCHAR,
    PRIMARY KEY (dataset_id, idx));
CREATE TABLE IF NOT EXISTS gold (
    dataset_id INTEGER NOT NULL, idx INTEGER NOT NULL, label TINYINT NOT NULL,
    PRIMARY KEY (dataset_id, idx));
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL, name VARCHAR NOT NULL,
    config_json VARCHAR NOT NULL, model_json VARCHAR NOT NULL, seed BIGINT,
    status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    last_iteration INTEGER, last_seq INTEGER NOT NULL, error VARCHAR, parent_run_id INTEGER);
CREATE TABLE IF NOT EXISTS run_state (
    run_id INTEGER PRIMARY KEY, iteration INTEGER NOT NULL, rng_state_json VARCHAR NOT NULL,
    excluded_json VARCHAR NOT NULL, next_position INTEGER NOT NULL, alpha DOUBLE NOT NULL,
    t0 DOUBLE NOT NULL, u DOUBLE, ap DOUBLE, inconsistencies INTEGER);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL, iteration INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind VARCHAR NOT NULL, temperature DOUBLE, example INTEGER, old_label TINYINT,
    proposed_label TINYINT, proposal_logp_json VARCHAR, fixes_json VARCHAR NOT NULL,
    u_before DOUBLE, u_after DOUBLE, ap_before DOUBLE, ap_after DOUBLE,
    i_before INTEGER, i_after INTEGER, delta DOUBLE, accept_prob DOUBLE, draw DOUBLE,
    accepted BOOLEAN NOT NULL, labeled_count INTEGER NOT NULL, model_calls BIGINT NOT NULL,
    tokens_forwarded BIGINT NOT NULL, seconds DOUBLE NOT NULL, note VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS flips (
    run_id INTEGER NOT NULL, iteration INTEGER NOT NULL, seq INTEGER NOT NULL,
    ord INTEGER NOT NULL, example INTEGER NOT NULL, old_label TINYINT, new_label TINYINT,
    cause VARCHAR NOT NULL, partner INTEGER, PRIMARY KEY (run_id, seq, ord));
CREATE TABLE IF NOT EXISTS labels (
    run_id INTEGER NOT NULL, example INTEGER NOT NULL, label TINYINT NOT NULL,
    position INTEGER NOT NULL, logp_false DOUBLE, logp_true DOUBLE, pinned BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, example));
CREATE TABLE IF NOT EXISTS eval_runs (
    eval_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, config_json VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS eval_rows (
    eval_id INTEGER NOT NULL, row_no INTEGER NOT NULL, method VARCHAR, seed BIGINT,
    accuracy DOUBLE, n_test INTEGER, n_demos INTEGER, extra_json VARCHAR NOT NULL,
    PRIMARY KEY (eval_id, row_no));
"""
UPGRADES = {2: ["ALTER TABLE run_state ADD COLUMN IF NOT EXISTS progress_json VARCHAR"],
            3: ["ALTER TABLE datasets ADD COLUMN IF NOT EXISTS content_hash VARCHAR",
                "ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner VARCHAR"],
            4: ["CREATE TABLE IF NOT EXISTS icm_studio (marker VARCHAR NOT NULL)",
                "INSERT INTO icm_studio VALUES ('ICM Studio database 7d0f2c61-3b4e-4f0a-9c55-1e8a9b2d4f63')"],
            5: ["CREATE TABLE IF NOT EXISTS param_changes (run_id INTEGER NOT NULL, seq INTEGER NOT NULL, "
                "ord INTEGER NOT NULL, iteration INTEGER NOT NULL, parameter VARCHAR NOT NULL, old_value DOUBLE, "
                "new_value DOUBLE NOT NULL, PRIMARY KEY (run_id, seq, ord))"]}
CONFIG = {"task": "claims", "dataset": "tests", "search": {"seed": 0, "steps": 5}, "model": {"name": "fake"}}
TASK = {"name": "claims", "template": "Q: {question}\nA: {answer}\nCorrect:", "fields": ["question", "answer"]}


def old_database(path, version: int, set_param_notes: list[tuple[int, str]] = ()) -> None:
    """A file of that version holding one dataset of two examples and one run (run 1, created), with
    a set_param event per (iteration, note) given, as set_params and extend wrote them then."""
    con = duckdb.connect(str(path))
    con.execute(VERSION_1)
    for step in range(2, version + 1):
        for sql in UPGRADES[step]:
            con.execute(sql)
    con.execute("INSERT INTO schema_version VALUES (?)", [version])
    con.execute("INSERT INTO datasets (dataset_id, name, task_json, source, n_examples, has_gold, created_at) "
                "VALUES (nextval('dataset_ids'), 'claims', ?, 'tests', 2, false, now())", [json.dumps(TASK)])
    for idx in range(2):
        con.execute("INSERT INTO examples VALUES (1, ?, ?, ?, NULL, NULL)",
                    [idx, f"u{idx}", json.dumps({"question": f"q{idx}", "answer": f"a{idx}"})])
    con.execute("INSERT INTO runs (run_id, dataset_id, name, config_json, model_json, seed, status, created_at, "
                "updated_at, last_iteration, last_seq, error, parent_run_id) VALUES (nextval('run_ids'), 1, 'old run', "
                "?, '{}', 0, 'created', now(), now(), NULL, -1, NULL, NULL)", [json.dumps(CONFIG)])
    for seq, (iteration, note) in enumerate(set_param_notes):
        con.execute("INSERT INTO events (run_id, iteration, seq, kind, fixes_json, accepted, labeled_count, model_calls, "
                    "tokens_forwarded, seconds, note, created_at) VALUES (1, ?, ?, 'set_param', '[]', true, 0, 0, 0, "
                    "0.0, ?, now())", [iteration, seq, note])
    if set_param_notes:
        con.execute("UPDATE runs SET last_seq = ?, last_iteration = ? WHERE run_id = 1",
                    [len(set_param_notes) - 1, set_param_notes[-1][0]])
    con.close()
