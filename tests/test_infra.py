"""infra/: the prefect.yaml entrypoints import, deployments build with parameter descriptions,
and the DeepSpeed configs parse."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_are_the_project_flows():
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert flow.name.startswith("llmasr-"), dep["entrypoint"]
        assert dep["concurrency_limit"] == 1  # two runs never write one work dir
        assert dep["work_pool"]["name"] in {"llmasr-process", "llmasr-k8s-gpu"}
        names.add(dep["name"])
    assert {"llmasr-data", "llmasr-train", "llmasr-evaluate", "llmasr-pipeline", "llmasr-ablation"} <= names
    template = json.loads((REPO / "infra" / "k8s" / "gpu-job-template.json").read_text())
    limits = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpus }}"
    pools = spec["definitions"]["work_pools"]
    for name in ("k8s_gpu_label", "k8s_gpu_train"):
        assert pools[name]["job_variables"]["gpus"] >= 1, name
    for name in ("docker_gpu_label", "docker_gpu_train"):  # docker-py DeviceRequest, as `docker run --gpus`
        (request,) = pools[name]["job_variables"]["container_create_kwargs"]["device_requests"]
        assert request["capabilities"] == [["gpu"]] and request["count"] != 0, name


def test_deployments_carry_parameter_descriptions_and_the_cron():
    from flows.deployments import build_deployments
    from llmasr.config import load_config

    cfg = load_config("demo", ["schedule.data_cron=0 3 * * *"])
    deps = {d.name: d for d in build_deployments(cfg, profile="demo")}
    assert set(deps) == {
        "llmasr-data",
        "llmasr-train",
        "llmasr-evaluate",
        "llmasr-pipeline",
        "llmasr-ablation",
    }
    data = deps["llmasr-data"]
    assert data.parameters == {"profile": "demo"}
    props = data._parameter_openapi_schema.properties
    assert "YouTube" in props["sources"]["description"]
    assert "key=value" in props["overrides"]["description"]
    assert [s.schedule.cron for s in data.schedules] == ["0 3 * * *"]
    assert not deps["llmasr-train"].schedules
    ablation = deps["llmasr-ablation"]._parameter_openapi_schema.properties  # the form a person fills in
    assert (
        "KEY=V1,V2" in ablation["vary"]["description"] and "NAME:KEY=V" in ablation["variants"]["description"]
    )
    # `llmasr ui --source URL`: the Run buttons of the data and pipeline deployments use it
    with_src = {d.name: d for d in build_deployments(cfg, profile="demo", sources=["https://youtu.be/x"])}
    for name in ("llmasr-data", "llmasr-pipeline", "llmasr-ablation"):
        assert with_src[name].parameters == {"profile": "demo", "sources": ["https://youtu.be/x"]}, name
    assert with_src["llmasr-train"].parameters == {"profile": "demo"}


def test_deepspeed_configs_parse():
    for name in ("zero2.json", "zero2_cpu.json"):
        cfg = json.loads((REPO / "infra" / "deepspeed" / name).read_text())
        assert "zero_optimization" in cfg
