-- Readers of a chapter job on other processes, so that its owner keeps generating while they
-- read even where notifications do not arrive (a pooled connection). A reader whose process
-- stopped heartbeating does not count.

CREATE TABLE chapter_job_readers (
    journal_id text NOT NULL,  -- chapter_jobs.journal_id
    reader     text NOT NULL,  -- one following job
    owner      text NOT NULL,  -- its process (owners.owner)
    PRIMARY KEY (journal_id, reader)
);
