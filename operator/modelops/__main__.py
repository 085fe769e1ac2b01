"""Allows `python -m modelops`."""

from modelops.cli import main

raise SystemExit(main())
