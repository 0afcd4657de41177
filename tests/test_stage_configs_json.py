"""Every stage's config is JSON data (issue 26: a stage config is hashed for caching and
written into results.json; validated experiment configs inside it must be plain tables)."""
from __future__ import annotations

import json

import pytest

from abstain.pipeline import SCALES, stage_table


@pytest.mark.parametrize("demo", [True, False])
@pytest.mark.parametrize("scale", SCALES)
def test_every_stage_config_is_json_data(scale: str, demo: bool) -> None:
    for name, stage in stage_table(scale).items():
        cfg = stage.config(scale, demo)
        text = json.dumps(cfg, sort_keys=True)        # no default=: only JSON types
        assert json.loads(text) == json.loads(json.dumps(json.loads(text))), name
