"""``python -m infra.cli``: the ``renkei`` command, as the workers and the tests start it."""

from infra.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
