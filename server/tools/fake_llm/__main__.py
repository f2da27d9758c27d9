"""`python -m server.tools.fake_llm serve|probe`."""

from server.tools.fake_llm.cli import main

main()
