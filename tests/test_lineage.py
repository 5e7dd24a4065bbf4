"""A model trained in several runs names its shipped ancestor and every run in between when shipped."""
import json
import shutil

import pytest

from ttscale.errors import TTScaleError
from ttscale.models.lineage import lineage, ship_model
from ttscale.models.registry import model_info, resolve_model


def _run_dir(tmp_path, name, meta):
    """A copy of ttscale-tiny's weights posing as the output of one training run."""
    d = tmp_path / name
    shutil.copytree(resolve_model("ttscale-tiny"), d)
    (d / "training.json").write_text(json.dumps(meta))
    return d


def test_lineage_follows_sft_and_rl_links_back_to_the_shipped_model(tmp_path):
    sft = _run_dir(tmp_path, "sft", {"config": {"init_from": "ttscale-tiny"}, "command": "ttscale train sft A"})
    more = _run_dir(tmp_path, "more", {"config": {"init_from": str(sft)}, "command": "ttscale train sft B"})
    rl = _run_dir(tmp_path, "rl", {"kind": "policy", "parent": "more", "parent_path": str(more),
                                   "command": "ttscale train rl C"})
    assert lineage(rl) == ("ttscale-tiny", ["ttscale train sft A", "ttscale train sft B", "ttscale train rl C"])
    assert lineage(resolve_model("ttscale-tiny")) == ("ttscale-tiny", [])


def test_lineage_of_a_model_trained_from_scratch_and_of_a_missing_start(tmp_path):
    scratch = _run_dir(tmp_path, "scratch", {"config": {"init_from": None}, "command": "ttscale train sft S"})
    assert lineage(scratch) == (None, ["ttscale train sft S"])
    lost = _run_dir(tmp_path, "lost", {"parent_path": str(tmp_path / "gone"), "command": "C"})
    assert lineage(lost) == (str(tmp_path / "gone"), ["C"])


def test_shipped_copy_records_parent_and_stages_and_generates_like_the_run(tmp_path):
    from ttscale.engine import load_generator
    from ttscale.types import GenerationRequest, SamplingParams

    sft = _run_dir(tmp_path, "sft", {"config": {"init_from": "ttscale-tiny"}, "command": "ttscale train sft A"})
    rl = _run_dir(tmp_path, "rl", {"kind": "policy", "params": 5, "parent_path": str(sft), "command": "R"})
    (rl / "checkpoint-20").mkdir()
    shipped = ship_model(rl, "tiny-child", root=tmp_path / "shipped")
    info = model_info(shipped)
    assert (info.name, info.parent, info.kind) == ("tiny-child", "ttscale-tiny", "policy")
    meta = json.loads((shipped / "training.json").read_text())
    assert meta["stages"] == ["ttscale train sft A"] and meta["command"] == "R" and "parent_path" not in meta
    assert not (shipped / "checkpoint-20").exists()
    req = [GenerationRequest("Q: 12+7*3\n", SamplingParams(temperature=0.0, max_tokens=24))]
    text = load_generator(str(shipped)).generate(req)[0].completions[0].text
    assert text and text == load_generator(str(rl)).generate(req)[0].completions[0].text


def test_ship_refuses_a_taken_name_and_a_directory_that_is_not_a_trained_model(tmp_path):
    rl = _run_dir(tmp_path, "rl", {"parent_path": "ttscale-tiny", "command": "R"})
    ship_model(rl, "c", root=tmp_path / "shipped")
    with pytest.raises(TTScaleError, match="already exists"):
        ship_model(rl, "c", root=tmp_path / "shipped")
    with pytest.raises(TTScaleError, match="not a trained model directory"):
        ship_model(tmp_path / "nothing", "d", root=tmp_path / "shipped")


def test_the_server_defaults_to_the_largest_family_model_not_a_shipped_child():
    from ttscale.models.registry import family_models, list_models
    from ttscale.serve.build import default_model

    family = family_models()
    children = [m for m in list_models() if m.parent]
    assert children, "the repository ships children (ttscale-small-rl, ...)"
    assert default_model() == family[-1].path
    assert default_model() not in {m.path for m in children}
    assert family[-1].params == max(m.params for m in list_models() if m.kind == "policy")
