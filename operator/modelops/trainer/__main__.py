"""Allows `python -m modelops.trainer`."""

from modelops.trainer.cli import main

raise SystemExit(main())
