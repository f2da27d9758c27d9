-- The process generating a message, so that when it dies mid-answer (SIGKILL, a crash) another
-- process can mark the message interrupted with the text its journal holds, and end its stream.

ALTER TABLE messages ADD COLUMN owner text;
CREATE INDEX messages_streaming_idx ON messages (owner) WHERE status = 'streaming';
