"""``python -m launcher`` is the ``launcher`` command."""
from .cli import main

raise SystemExit(main())
