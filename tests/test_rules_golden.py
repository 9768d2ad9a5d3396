"""Before/after: the rules' outputs stay byte-identical through a change of how rules are written (issue 16).

tests/golden/rules.json holds the sha256 of every output file of replays made with the code before the
rules moved to the rule registry (0.4.0's single `Rules` class): the real-data mix (tests/recordings.py
`omnichannel_recording`, skipped without ../shared) and the demo's generated recording (always there),
each under the default config and under configs that switch each delivery behaviour off, so every branch
of the rules is covered. A change that alters one byte of one output fails here, naming the file.

Regenerate only for an intended change of outputs, and say so in the commit:
    OMNITRIGGER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_rules_golden.py
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from conftest import replay
from omnitrigger.config import Config
from geolife import write_stores_csv
from recordings import omnichannel_recording

GOLDEN = Path(__file__).parent / "golden" / "rules.json"
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "one_a_product_per_rule": {"cart_group_window_s": 0, "add_cancels_browse": False, "cross_rule_product_cap": False},
    "no_grace_no_quiet_hours": {"purchase_grace_s": 0, "quiet_hours": "", "require_location_consent": False},
    "short_delays": {"cart_abandoned_after_s": 600, "browse_abandoned_after_s": 3600, "offer_quiet_hours": True,
                     "disabled_rules": ("store_visit_offer",)},
}
OUTPUTS = ("triggers", "suppressed", "retractions", "visits", "identities", "refused_links")


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(files[name]).hexdigest() for name in OUTPUTS}


def check(recording_name: str, recording: Path, stores: Path, tmp_path: Path) -> None:
    got = {}
    for name, overrides in CONFIGS.items():
        _, files = replay(tmp_path, recording, name=f"{recording_name}-{name}", stores=stores,
                          config=Config(**overrides))
        assert files["triggers"], f"{recording_name}/{name}: no triggers at all is no test"
        got[name] = digests(files)
    saved = orjson.loads(GOLDEN.read_bytes()) if GOLDEN.exists() else {}
    if os.environ.get("OMNITRIGGER_UPDATE_GOLDEN") == "1":
        saved[recording_name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(orjson.dumps(saved, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        return
    assert recording_name in saved, f"no golden digests for {recording_name}: see this module's docstring"
    for name, outputs in got.items():
        for output, digest in outputs.items():
            assert digest == saved[recording_name][name][output], f"{recording_name}, config {name}: {output} changed"


def test_the_demo_recordings_outputs_are_unchanged(tmp_path: Path) -> None:
    from omnitrigger.demo.generator import RecordingGenerator

    generator = RecordingGenerator(seed=7).generate()
    generator.write(tmp_path / "demo")
    generator.write_stores(tmp_path / "demo-stores.csv")
    check("demo", tmp_path / "demo", tmp_path / "demo-stores.csv", tmp_path)


def test_the_real_data_mixs_outputs_are_unchanged(tmp_path: Path, real_data: Path) -> None:
    _, stores = omnichannel_recording(real_data, tmp_path / "mix")
    check("real_mix", tmp_path / "mix", write_stores_csv(tmp_path / "mix-stores.csv", stores), tmp_path)
