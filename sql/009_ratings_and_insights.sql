-- Readers rate answers; what the authors' insights need that answers did not record; which
-- readers a personalized chapter was rendered for, so that it can be deleted with their data.

-- best_similarity: the best dense cosine between the question (with its highlighted passage)
-- and the passages sent as sources; 0 when none was close in meaning. not_covered: the answer
-- says the book does not cover the question. Both NULL for answers saved before this migration.
ALTER TABLE messages
    ADD COLUMN best_similarity real,
    ADD COLUMN not_covered boolean;
CREATE INDEX messages_user_idx ON messages (user_id);
CREATE INDEX messages_created_idx ON messages (created_at);

-- One rating per message: a message has one reader, who alone may rate it.
CREATE TABLE ratings (
    message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    user_id    text NOT NULL,
    rating     smallint NOT NULL CHECK (rating IN (-1, 1)),
    comment    text CHECK (char_length(comment) <= 2000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ratings_user_idx ON ratings (user_id);

-- chapter_cache rows are shared by everyone whose profile has the same fingerprint; this says
-- whose request each personalized one served (the row may not exist yet while it generates).
CREATE TABLE chapter_cache_readers (
    user_id    text NOT NULL,
    key        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
