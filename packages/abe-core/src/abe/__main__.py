"""`python -m abe`: the `abe` command, for when the console script is not on PATH."""

from abe.cli import main

raise SystemExit(main())
