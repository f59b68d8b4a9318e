"""The registry's schema history (saerun/registry.py applies it; no SQLite import here).

Each entry upgrades the schema by one version, recorded in `PRAGMA user_version`. Never edit a
released entry: append one.
"""

# (sqlite-utils' `Migrations` helper is not used: it decides what is pending outside its write
# transaction, so two processes opening a fresh file at once would both try to create the
# tables. Here the version is re-read after `BEGIN IMMEDIATE`, and a newer file is refused.)
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE specs (
        spec_hash TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT, yaml_text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, name TEXT NOT NULL, group_key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('planned', 'running', 'done', 'failed')),
        config TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
        train_seconds REAL, eval_seconds REAL, tokens_trained INTEGER, environment TEXT,
        data_fingerprint TEXT, error TEXT
    );
    CREATE TABLE spec_runs (
        spec_hash TEXT NOT NULL REFERENCES specs(spec_hash),
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        PRIMARY KEY (spec_hash, run_id)
    );
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT NOT NULL, value REAL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE curves (
        run_id TEXT NOT NULL REFERENCES runs(run_id), step INTEGER NOT NULL,
        tokens INTEGER, loss REAL, mse REAL, l0 REAL, dead_fraction REAL, lr REAL,
        PRIMARY KEY (run_id, step)
    );
    CREATE INDEX runs_status ON runs(status);
    """,
    # v2: the spec that first asked for a run (its `spec_name` in results); backfilled from the
    # oldest linked spec.
    """
    ALTER TABLE runs ADD COLUMN spec_hash TEXT REFERENCES specs(spec_hash);
    UPDATE runs SET spec_hash = (
        SELECT sr.spec_hash FROM spec_runs sr JOIN specs s USING (spec_hash)
        WHERE sr.run_id = runs.run_id ORDER BY s.created_at, sr.spec_hash LIMIT 1
    );
    CREATE INDEX spec_runs_run ON spec_runs(run_id);
    """,
    # v3: who is running a run, and until when their lease holds (claims, take-over).
    """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN lease_until REAL;
    """,
    # v4: how a run was launched (the launcher section as JSON), and for a cluster job its id and
    # log file (see saerun/launch/).
    """
    ALTER TABLE runs ADD COLUMN launcher TEXT;
    ALTER TABLE runs ADD COLUMN job_id TEXT;
    ALTER TABLE runs ADD COLUMN log_path TEXT;
    """,
    # v5: the training FLOPs per token of one step, counted once by the planner (the frontier's
    # compute classes read it; NULL for older runs), and post-hoc re-evaluations
    # (saerun/posthoc.py): one JSON record per (run, variant), with what it was computed on
    # (eval tokens, the run's finished_at) so that a stale one is recomputed.
    """
    ALTER TABLE runs ADD COLUMN step_flops_per_token REAL;
    CREATE TABLE posthoc (
        run_id TEXT NOT NULL REFERENCES runs(run_id), variant TEXT NOT NULL,
        tokens INTEGER NOT NULL, run_finished_at TEXT, record TEXT NOT NULL,
        PRIMARY KEY (run_id, variant)
    );
    """,
    # v6: how many times a run's cluster job requeued itself (time limit, pre-emption) so far;
    # `saerun status` shows a queued run with requeues as `requeued`.
    """
    ALTER TABLE runs ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0;
    """,
)
