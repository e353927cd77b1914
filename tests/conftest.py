"""Session-wide test settings."""

from __future__ import annotations

import pytest

from mcnc.llm.gguf_tokenizer import CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """Every process of the session (subprocesses inherit the variable) shares one fresh cache
    folder: the tests neither read nor fill the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("mcnc-cache")))
        yield
