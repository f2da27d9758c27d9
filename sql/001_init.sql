-- Book metadata (written by ingest), conversations and messages (written by the chat server).

CREATE TABLE chapters (
    id           text PRIMARY KEY,
    title        text NOT NULL,
    url          text NOT NULL,
    source_path  text NOT NULL,
    position     integer NOT NULL,
    content_hash text NOT NULL,
    markdown     text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sections (
    id           text PRIMARY KEY,
    chapter_id   text NOT NULL REFERENCES chapters (id) ON DELETE CASCADE,
    title        text NOT NULL,
    heading_path text[] NOT NULL,
    level        integer NOT NULL,
    position     integer NOT NULL
);
CREATE INDEX sections_chapter_idx ON sections (chapter_id, position);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    text NOT NULL,
    title      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_idx ON conversations (user_id, updated_at DESC);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    stream_id         text NOT NULL,
    question          text NOT NULL,
    selection         jsonb,
    chapter_id        text,
    answer            text NOT NULL DEFAULT '',
    sources           jsonb NOT NULL DEFAULT '[]',
    status            text NOT NULL
        CHECK (status IN ('streaming', 'complete', 'cancelled', 'failed', 'interrupted')),
    error_code        text,
    prompt_tokens     integer,
    completion_tokens integer,
    model             text,
    timings           jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at);
