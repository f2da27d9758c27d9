-- Chapter generations in progress, so that identical requests on any process share one: the
-- owner journals the job's text as a stream (user_id '', stream_id = journal_id) that the
-- other processes follow. A row whose owner stopped heartbeating may be taken over.

CREATE TABLE chapter_jobs (
    key        text PRIMARY KEY,  -- the chapter cache key
    owner      text NOT NULL,     -- the process generating it (owners.owner)
    journal_id text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
