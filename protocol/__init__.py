"""Wire types and codec of the chat protocol; pure, no I/O."""
