"""`python -m server.fake_llm serve|probe`."""

from server.fake_llm.cli import main

main()
