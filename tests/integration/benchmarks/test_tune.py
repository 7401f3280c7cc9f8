"""`make tune`: the sweep refuses bad input, picks by its stated rule, writes settings the registry
and config.pbtxt read back, and runs end to end against a twin in real Triton."""

import json
import shutil

import pytest

from benchmarks import tune
from cxr import registry
from support import make_settings


@pytest.mark.triton
def test_a_tiny_sweep_runs_in_triton_against_a_twin_and_writes(tmp_path, cache_dir):
    config_dir = tmp_path / "model_configs"
    shutil.copytree(registry.CONFIG_DIR, config_dir)
    shipped = (registry.CONFIG_DIR / "siglip-tiny.json").read_text()
    sweep = tune.sweep(instances=(1,), delays=(0, 500), preferred=((),))
    results = tune.run("siglip-tiny", sweep, concurrencies=(1, 2), seconds=0.5, confirm_rounds=1, write=True,
                       config_dir=config_dir, save=False, log=lambda *_: None,
                       base=make_settings(tmp_path, cache_dir), precision="int8")  # Triton serves int8 too
    assert [row["label"] for row in results["rows"]] == ["off i=1", "on i=1 d=0 p=-", "on i=1 d=500 p=-"]
    for row in results["rows"]:
        for kind in tune.KINDS:
            assert row[kind]["c2"]["requests"] > 0 and row[kind]["c2"]["errors"] == 0
            assert row[kind]["c2"]["triton"]["mean_batch"] >= 1
    assert set(results["confirm"]) == set(tune.KINDS) and results["settings"]["precision"] == "int8"
    written = json.loads((config_dir / "siglip-tiny.json").read_text())["batching"]
    assert written["max_queue_delay_us"] == results["chosen"]["image"]["max_queue_delay_us"]
    assert (registry.CONFIG_DIR / "siglip-tiny.json").read_text() == shipped
