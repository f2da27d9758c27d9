"""The authors' view: what readers asked, where the book fell short, and what they rated down."""
