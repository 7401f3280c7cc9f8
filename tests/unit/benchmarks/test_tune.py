"""`make tune`: the sweep refuses bad input, picks by its stated rule, writes settings the registry
and config.pbtxt read back, and runs end to end against a twin in real Triton."""

import json
import shutil

import pytest

from benchmarks import tune
from benchmarks.tune import Setting
from cxr import registry
from cxr.towers import towers
from export.triton_config import model_config


@pytest.mark.parametrize("arguments, message", [
    (["--instances", "0"], "at least 1"),
    (["--delays", "-5"], "0 or more"),
    (["--preferred", "128"], "max_batch_size"),
    (["--concurrencies", "4", "4"], "two distinct"),
])
def test_bad_sweeps_are_refused(arguments, message, capsys):
    with pytest.raises(SystemExit):
        tune.main(["--model", "cxr-mini", *arguments])
    assert message in capsys.readouterr().err


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        tune.main(["--model", "no-such-model"])
    assert "invalid choice" in capsys.readouterr().err


def _figures(c1_p50, c16_qps):
    return {"c1": {"p50_ms": c1_p50, "qps": 1000 / c1_p50}, "c16": {"p50_ms": 10.0, "qps": c16_qps}}


def test_choice_is_the_fastest_at_high_concurrency_that_keeps_low_latency():
    rows = [(Setting(False, 1), {k: _figures(2.0, 100) for k in tune.KINDS}),
            (Setting(True, 1, 0), {k: _figures(2.0, 150) for k in tune.KINDS}),
            (Setting(True, 1, 5000), {k: _figures(7.0, 400) for k in tune.KINDS}),  # too slow alone
            (Setting(True, 2, 500), {k: _figures(2.2, 152) for k in tune.KINDS}),  # a near-tie: more instances
            (Setting(True, 1, 500), {"image": _figures(2.1, 300), "text": _figures(2.1, 149)})]
    assert tune.choose(rows, "image", 1, 16) == Setting(True, 1, 500)
    assert tune.choose(rows, "text", 1, 16) == Setting(True, 1, 0)
    assert tune.best_baseline(rows, "image", 16) == Setting(False, 1)


def test_written_batching_reads_back_per_tower(tmp_path):
    config_dir = tmp_path / "model_configs"
    shutil.copytree(registry.CONFIG_DIR, config_dir)
    chosen = {"image": Setting(True, 1, 500, (16,)), "text": Setting(True, 2, 0)}
    path = tune.write_batching("cxr-mini", chosen, config_dir)
    raw = json.loads(path.read_text())
    spec = registry._parse("cxr-mini", raw)
    assert raw["batching"]["max_batch_size"] == registry.get_model("cxr-mini").batching.max_batch_size
    image, text = towers(spec)
    image_config, text_config = model_config(image, spec.batching, "local"), model_config(text, spec.batching, "local",
                                                                                           pad_id=0)
    assert (image_config.dynamic_batching.max_queue_delay_microseconds, image_config.instance_group[0].count,
            list(image_config.dynamic_batching.preferred_batch_size)) == (500, 1, [16])
    assert (text_config.dynamic_batching.max_queue_delay_microseconds, text_config.instance_group[0].count,
            list(text_config.dynamic_batching.preferred_batch_size)) == (0, 2, [])
    same = tune.batching_entry(raw["batching"], {"image": Setting(True, 1, 0), "text": Setting(True, 1, 0)})
    assert "text" not in same and "preferred_batch_sizes" not in same
