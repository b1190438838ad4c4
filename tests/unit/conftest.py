import _unit_helpers
import pytest


@pytest.fixture(scope="session", autouse=True)
def _print_unit_tables():
    yield
    text = _unit_helpers.fmt_table()
    if text:
        print(text)
