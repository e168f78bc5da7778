"""``LEADFLOW_KAFKA_*`` settings: defaults, values read, and a value that cannot be used named
in one ConfigError (the CLI prints it as one line, exit 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadflow.config import ConfigError
from leadflow.consumers.settings import KafkaSettings


def test_defaults_are_kafka_pythons_fetch_and_two_thousand_records_a_poll() -> None:
    settings = KafkaSettings.from_env({})
    assert (settings.max_poll_records, settings.max_partition_fetch_bytes) == (2000, 1 << 20)


@given(st.integers(min_value=1024, max_value=1 << 30))
def test_a_partition_fetch_size_in_range_is_taken(size: int) -> None:
    env = {"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES": str(size)}
    assert KafkaSettings.from_env(env).max_partition_fetch_bytes == size


@pytest.mark.parametrize("text", ["0", "1023", str((1 << 30) + 1), "-5"])
def test_a_partition_fetch_size_out_of_range_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match=f"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES={text} "
                                          "is outside 1024 to 1073741824"):
        KafkaSettings.from_env({"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES": text})


@pytest.mark.parametrize("text", ["8MiB", "", "1e6"])
def test_a_partition_fetch_size_that_is_no_number_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match="not a number"):
        KafkaSettings.from_env({"LEADFLOW_KAFKA_MAX_PARTITION_FETCH_BYTES": text})
