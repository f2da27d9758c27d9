-- Frames are journaled as runs: one row per stream per flush, frames joined by newlines (JSON
-- text never holds a raw newline), so a busy server writes a row per stream every flush
-- instead of a row per token.

DROP TABLE stream_frames;

CREATE TABLE stream_frames (
    stream_key text NOT NULL,
    first_seq  integer NOT NULL,
    last_seq   integer NOT NULL,
    frames     text NOT NULL,
    PRIMARY KEY (stream_key, first_seq)
);
