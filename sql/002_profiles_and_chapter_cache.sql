-- Reader profiles (PUT /v1/profile) and finished personalized or translated chapters.

CREATE TABLE profiles (
    user_id             text PRIMARY KEY,
    software_background text NOT NULL,
    hardware_background text NOT NULL,
    level               text NOT NULL CHECK (level IN ('beginner', 'intermediate', 'advanced')),
    language            text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chapter_cache (
    key               text PRIMARY KEY,  -- sha256 of the fields below
    chapter_id        text NOT NULL,
    content_hash      text NOT NULL,
    mode              text NOT NULL,
    language          text NOT NULL,
    profile_hash      text NOT NULL,
    model             text NOT NULL,
    body              text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    finish_reason     text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chapter_cache_chapter_idx ON chapter_cache (chapter_id);
