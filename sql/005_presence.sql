-- Connections and live streams of each user per server process, so per-user limits hold across
-- processes. A process heartbeats; rows of a process that stopped heartbeating do not count.

CREATE TABLE owners (
    owner     text PRIMARY KEY,
    heartbeat timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE presence (
    owner       text NOT NULL REFERENCES owners (owner) ON DELETE CASCADE,
    user_id     text NOT NULL,
    connections integer NOT NULL,
    streams     integer NOT NULL,
    PRIMARY KEY (owner, user_id)
);
CREATE INDEX presence_user_idx ON presence (user_id);
