"""Analytics settings that cannot work are refused by Config.check() (which
`python -m analytics`, its consumer and create_app call), naming the setting."""

import pytest

from analytics.config import Config
from pms_common.config import ConfigError


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"BATCH_WAIT_MS": -1}, "ANALYTICS_BATCH_WAIT_MS"),
        ({"BATCH_SIZE": 0}, "ANALYTICS_BATCH_SIZE"),
        ({"FETCH_WAIT_MS": 0}, "ANALYTICS_FETCH_WAIT_MS"),
        ({"DEDUP_HOURS": 0}, "ANALYTICS_DEDUP_HOURS"),
        ({"HEARTBEAT_SECONDS": 20.0, "CONSUMER_STALE_SECONDS": 15.0}, "CONSUMER_HEARTBEAT_SECONDS"),
        ({"PATIENT_TOPIC": "same", "DEAD_LETTER_TOPIC": "same"}, "ANALYTICS_TOPIC"),
    ],
)
def test_unworkable_settings_are_refused_by_name(overrides, named):
    with pytest.raises(ConfigError, match=named):
        Config(**overrides).check()


def test_a_zero_batch_wait_is_allowed():
    config = Config(BATCH_WAIT_MS=0)
    config.check()
    assert config.BATCH_WAIT_MS == 0
