-- Streams and their frames, for resume from any process; per-user rate windows and daily usage.

CREATE TABLE streams (
    user_id     text NOT NULL,
    stream_id   text NOT NULL,
    stream_key  text NOT NULL,  -- one generation; a reused stream id gets a new key
    kind        text NOT NULL,
    owner       text NOT NULL,  -- the process generating it
    last_seq    integer NOT NULL DEFAULT 0,
    finished    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, stream_id)
);
CREATE INDEX streams_updated_idx ON streams (updated_at);

CREATE TABLE stream_frames (
    stream_key text NOT NULL,
    seq        integer NOT NULL,
    frame      text NOT NULL,
    PRIMARY KEY (stream_key, seq)
);

CREATE TABLE rate_windows (
    user_id      text NOT NULL,
    window_start timestamptz NOT NULL,
    requests     integer NOT NULL,
    PRIMARY KEY (user_id, window_start)
);

CREATE TABLE usage_daily (
    user_id           text NOT NULL,
    day               date NOT NULL,
    completion_tokens bigint NOT NULL,
    PRIMARY KEY (user_id, day)
);
