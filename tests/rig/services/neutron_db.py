"""Neutron's database for the test rig: the schema made from its models (as Neutron's own unit
tests do), since its migrations ALTER constraints, which SQLite cannot.

Runs inside the services venv: ``python neutron_db.py sqlite:////path/neutron.db``.
"""

import sys

import sqlalchemy  # type: ignore[import-not-found]
from neutron.db.migration.models import head  # type: ignore[import-not-found]


def main() -> None:
    engine = sqlalchemy.create_engine(sys.argv[1])
    head.get_metadata().create_all(engine)


if __name__ == "__main__":
    main()
