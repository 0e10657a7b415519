"""``python -m prefixtune.cli``."""

from prefixtune.cli.main import main

raise SystemExit(main())
