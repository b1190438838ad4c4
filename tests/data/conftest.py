from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache, so nothing leaks between tests or from the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIT_UNITSCALE_CACHE", str(cache))
    return cache


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
