"""The `stack` fixture: a checkout's state as a backup finds it (support.backup_stack)."""

import pytest

from support.backup_stack import Stack, make_stack


@pytest.fixture
def stack(tmp_path) -> Stack:
    return make_stack(tmp_path / "site")
