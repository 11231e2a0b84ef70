"""The W&B workspace as code: built and serialised offline, saved through a mocked W&B cloud."""

from __future__ import annotations

import importlib.util
import json
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import REPO
from wandb_workspaces.workspaces import Workspace, internal

from second_order.suite.tracking.dashboard import (
    PAPER_SECTION,
    PRESETS,
    build_workspace,
    workspace_spec,
)

LINE_PLOT = "Run History Line Plot"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection fails the test: nothing here may reach W&B."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def stable(spec: Any) -> Any:
    """``spec`` without the random panel ids (``__id__``)."""
    if isinstance(spec, dict):
        return {k: stable(v) for k, v in spec.items() if k != "__id__"}
    if isinstance(spec, list):
        return [stable(v) for v in spec]
    return spec


def sections(spec: dict) -> dict[str, list[dict]]:
    """Section name -> its panels, in workspace order."""
    return {s["name"]: s["panels"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}


def plotted(panels: list[dict]) -> list[tuple[str, list[str]]]:
    """(x, y metrics) of each panel."""
    return [(p["config"]["xAxis"], p["config"]["metrics"]) for p in panels]


def runset(spec: dict) -> dict:
    (only,) = spec["spec"]["section"]["runSets"]
    return only


def load_script():
    spec = importlib.util.spec_from_file_location("wandb_dashboard", REPO / "scripts" / "wandb_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_is_json_and_stable_once_panel_ids_are_stripped():
    first, second = (workspace_spec(build_workspace("team", "proj")) for _ in range(2))
    ids = [p["__id__"] for panels in sections(first).values() for p in panels]
    assert len(set(ids)) == len(ids) == 14  # one random id per panel
    assert first != second  # the ids differ between builds ...
    assert stable(first) == stable(second)  # ... and nothing else does
    assert json.loads(json.dumps(first)) == first
    assert (first["entity"], first["project"], first["displayName"]) == ("team", "proj", "second-order")


def test_paper_figures_then_a_section_per_new_experiment():
    spec = workspace_spec(build_workspace("team", "proj"))
    by_name = sections(spec)
    assert list(by_name) == [PAPER_SECTION, "beyond_paper", "baselines", "curvature"]
    assert plotted(by_name[PAPER_SECTION]) == [
        ("step", ["train/loss"]),
        ("time_s", ["train/loss"]),
        ("epoch", ["eval/acc"]),
    ]
    curvature = plotted(by_name["curvature"])
    for measure in ("hessian_top1", "hessian_bottom1", "hessian_neg_mass"):
        assert ("step", [f"curvature/{measure}"]) in curvature
    assert ("step", ["opt/damping"]) in plotted(by_name["beyond_paper"])
    assert ("epoch", ["eval/loss"]) in plotted(by_name["baselines"])


def test_every_panel_draws_groups_as_mean_with_std_band():
    spec = workspace_spec(build_workspace("team", "proj"))
    panels = [p for ps in sections(spec).values() for p in ps]
    assert {p["viewType"] for p in panels} == {LINE_PLOT}
    for p in panels:
        config = p["config"]
        assert (config["aggregate"], config["groupAgg"], config["groupArea"]) == (True, "mean", "stddev"), config
        assert "groupBy" not in config  # the runs table's grouping (below) applies; one key would merge experiments
    loss_vs_step = sections(spec)[PAPER_SECTION][0]["config"]
    assert loss_vs_step["yLogScale"] is True and loss_vs_step["chartTitle"] == "train loss vs step"


def test_by_default_every_run_is_shown_grouped_by_experiment_and_optimizer():
    spec = workspace_spec(build_workspace("team", "proj"))
    rs = runset(spec)
    assert rs["filters"]["filters"] == []  # any experiment_name: default, fig09_11_gauss_newton, a study's, ...
    assert rs["grouping"] == [
        {"section": "run", "name": "group"},
        {"section": "config", "name": "optimizer.value.name"},  # W&B's spelling of config optimizer.name
    ]
    settings = spec["spec"]["section"]["settings"]
    assert settings["useRunsTableGroupingInPanels"] is True
    assert settings["xAxis"] == "step" and settings["maxRuns"] >= 23  # the four presets' 23 methods
    assert list(sections(spec)) == [PAPER_SECTION, *PRESETS[1:]]


def group_filter(names: list[str]) -> list[dict]:
    return [{"key": {"section": "run", "name": "group"}, "op": "IN", "value": names, "disabled": False}]


def test_chosen_experiments_narrow_filter_and_sections():
    spec = workspace_spec(build_workspace("team", "proj", ["curvature", "paper"]))
    assert list(sections(spec)) == [PAPER_SECTION, "curvature"]
    assert runset(spec)["filters"]["filters"] == group_filter(["curvature", "paper"])
    every_preset = workspace_spec(build_workspace("team", "proj", list(PRESETS)))
    assert runset(every_preset)["filters"]["filters"] == group_filter(list(PRESETS))
    assert list(sections(every_preset)) == [PAPER_SECTION, *PRESETS[1:]]
    for bad in ([], [""], ["paper", "  "]):
        with pytest.raises(ValueError, match="experiment names"):
            build_workspace("team", "proj", bad)


def test_any_experiment_name_is_shown_with_the_paper_figures():
    """Runs of experiments that are not presets (a figure group, the default name, a study) are selectable."""
    names = ["fig09_11_gauss_newton", "default", "fig09_11_gauss_newton"]
    spec = workspace_spec(build_workspace("team", "proj", names))
    assert runset(spec)["filters"]["filters"] == group_filter(["fig09_11_gauss_newton", "default"])  # once each
    assert list(sections(spec)) == [PAPER_SECTION]
    mixed = workspace_spec(build_workspace("team", "proj", ["study_cpu", "baselines"]))
    assert runset(mixed)["filters"]["filters"] == group_filter(["study_cpu", "baselines"])
    assert list(sections(mixed)) == [PAPER_SECTION, "baselines"]


def test_spec_reads_back_as_the_same_workspace():
    """wandb-workspaces' own reader (what Workspace.from_url uses) accepts the spec."""
    spec = workspace_spec(build_workspace("team", "proj"))
    back = Workspace._from_model(internal.View.model_validate(spec))
    assert [s.name for s in back.sections] == list(sections(spec))
    assert stable(workspace_spec(back)) == stable(spec)


def test_script_writes_the_spec_without_saving(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(internal, "upsert_view2", lambda view: pytest.fail("saved without --save"))
    script = load_script()
    out = tmp_path / "spec.json"
    assert script.main(["--entity", "team", "--project", "proj", "--experiment", "paper", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert stable(written) == stable(workspace_spec(build_workspace("team", "proj", ["paper"])))
    assert script.main(["--entity", "team", "--project", "proj"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the "wrote ..." line
    assert list(sections(printed)) == [PAPER_SECTION, "beyond_paper", "baselines", "curvature"]
    assert runset(printed)["filters"]["filters"] == []  # no --experiment: every run of the project
    assert script.main(["--entity", "team", "--project", "proj", "--experiment", "fig09_11_gauss_newton",
                        "--experiment", "default"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert runset(printed)["filters"]["filters"] == group_filter(["fig09_11_gauss_newton", "default"])
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--entity", "team", "--experiment", ""])
    assert exit_info.value.code == 2 and "--experiment needs an experiment name" in capsys.readouterr().err


def test_script_save_publishes_to_entity_and_project(capsys, monkeypatch):
    uploads = []

    def upsert_view2(view):  # the GraphQL mutation to W&B's cloud
        uploads.append(view)
        return {"upsertView": {"view": {"name": "nw-abc", "id": "VmlldzoxMjM="}, "inserted": True}}

    monkeypatch.setattr(internal, "upsert_view2", upsert_view2)
    monkeypatch.setattr(  # the API client Workspace.url asks for the app's address
        "wandb.Api", lambda *a, **k: SimpleNamespace(client=SimpleNamespace(app_url="https://wandb.example"))
    )
    assert load_script().main(["--entity", "team", "--project", "proj", "--save"]) == 0
    (view,) = uploads
    assert (view.entity, view.project, view.display_name) == ("team", "proj", "second-order")
    assert view.name  # a new saved view gets a generated name
    sent = view.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert stable(sent["spec"]) == stable(workspace_spec(build_workspace("team", "proj"))["spec"])
    out = capsys.readouterr().out
    assert out.startswith("saved https://wandb.example/team/proj?nw=")
    assert '"panelBankConfig"' not in out  # --save alone prints no spec


def test_an_experiment_no_config_gives_gets_a_note_not_an_error(tmp_path, capsys):
    """A name of one's own is legal (runs may set any experiment_name); a typo gets the closest name."""
    script = load_script()
    known = script.known_experiments()
    assert {"paper", "default", "fig09_11_gauss_newton", "study_cpu", "study_cpu_tune"} <= set(known)
    assert script.unknown_experiment_note("paper", known) is None
    out = tmp_path / "spec.json"
    assert script.main(["--entity", "team", "--experiment", "papr", "--experiment", "mine", "--out", str(out)]) == 0
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and notes[0].startswith("note: --experiment papr: ") and "did you mean paper?" in notes[0]
    assert "did you mean" not in notes[1] and notes[1].endswith("the workspace shows the runs named mine as given")
    assert json.loads(out.read_text())["entity"] == "team"  # built all the same
