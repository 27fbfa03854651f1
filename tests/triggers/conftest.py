from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from resources.record_store import make_engine


@pytest.fixture
def engine(store_url) -> Iterator[sa.Engine]:
    eng = make_engine(store_url)
    yield eng
    eng.dispose()
