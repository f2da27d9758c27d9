"""A reader's own data: rating answers, managing and exporting conversations, and erasing
everything kept about them."""
