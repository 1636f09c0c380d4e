"""Hydra's ``--cfg job`` on the entry points: the composed config is printed and nothing runs."""

from __future__ import annotations

import pytest
import yaml

from optimizer import confirm, loadtest, report, revalidate, run
from optimizer.core.entry import EXIT_CONFIG, cfg_request


def test_cfg_request_takes_the_flag_in_each_spelling_and_leaves_the_overrides():
    assert cfg_request(["a=1", "--cfg", "job", "b=2"]) == (["a=1", "b=2"], "job")
    assert cfg_request(["--cfg=all", "--resolve", "a=1"]) == (["a=1"], "all")
    assert cfg_request(["-c", "hydra"]) == ([], "hydra")
    assert cfg_request(["a=1"]) == (["a=1"], None)


@pytest.mark.parametrize("main", [run.main, report.main, confirm.main, revalidate.main],
                         ids=["run", "report", "confirm", "revalidate"])
def test_cfg_job_prints_the_composed_config_instead_of_running(main, capsys):
    assert main(["--cfg", "job", "slo.p99_ms=1234", "study.name=cfg-shown"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["slo"]["p99_ms"] == 1234 and shown["study"]["name"] == "cfg-shown"


def test_the_load_tests_own_keys_stay_out_of_the_composed_config(capsys):
    assert loadtest.main(["--cfg", "job", "endpoint=http://127.0.0.1:1", "load.concurrency=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["load"]["concurrency"] == 3


def test_an_unknown_cfg_part_is_refused_with_the_choices(capsys):
    assert run.main(["--cfg", "bogus"]) == EXIT_CONFIG
    assert "give job (the composed config), hydra or all" in capsys.readouterr().err
