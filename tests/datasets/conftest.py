"""Fixtures for the datasets tests."""
import pytest
from loguru import logger


@pytest.fixture
def caplog_loguru():
    """Messages logged through loguru while the test runs (list of str)."""
    messages: list[str] = []
    sink_id = logger.add(lambda m: messages.append(str(m)), level="DEBUG", format="{message}")
    yield messages
    logger.remove(sink_id)
