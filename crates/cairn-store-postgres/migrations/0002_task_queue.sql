-- The remote-worker task queue, shared by every node: a worker may poll, heartbeat and report
-- to any of them.

-- One row per live task: queued (worker_id NULL) or claimed (worker_id and lease_until set).
-- A task leaves the table when it is reported, expires, is stopped while queued or removed.
CREATE TABLE cairn_tasks (
    task_id     TEXT PRIMARY KEY,
    -- Order of arrival: the oldest queued task is handed out first.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    agent_type  TEXT NOT NULL,
    -- The attempt the task is: one live task per attempt.
    plan_id     TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    run         BIGINT NOT NULL,
    -- The task as handed to the worker: its JSON text, kept byte for byte (key order, number
    -- forms and escapes such as \u0000, which JSONB would change or refuse).
    task        TEXT NOT NULL,
    worker_id   TEXT,
    -- By the database's clock; a claim whose lease ran out is as good as gone.
    lease_until TIMESTAMPTZ,
    -- The plan no longer wants the attempt: the holder's next heartbeat says stop.
    stop        BOOLEAN NOT NULL DEFAULT false,
    enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((worker_id IS NULL) = (lease_until IS NULL))
);

CREATE UNIQUE INDEX cairn_tasks_attempt ON cairn_tasks (plan_id, step_id, kind, attempt, run);
CREATE INDEX cairn_tasks_queued ON cairn_tasks (agent_type, seq) WHERE worker_id IS NULL;
CREATE INDEX cairn_tasks_order ON cairn_tasks (seq) WHERE worker_id IS NULL;
CREATE INDEX cairn_tasks_leases ON cairn_tasks (lease_until) WHERE worker_id IS NOT NULL;
CREATE INDEX cairn_tasks_holders ON cairn_tasks (worker_id) WHERE worker_id IS NOT NULL;

-- The workers seen polling, with the agent types of their latest poll.
CREATE TABLE cairn_workers (
    worker_id    TEXT PRIMARY KEY,
    agent_types  TEXT[] NOT NULL,
    last_poll_at TIMESTAMPTZ NOT NULL
);
