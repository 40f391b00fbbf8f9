"""The Snakemake workflow as users drive it: plans for every shipped config and for a user's own
COCO export, one config route (file + --config), the cluster profile, ImageNet weights checked
before the first job, and a tiny run end to end that reruns only what a change touches, reruns
for a non-root user, leaves readable files and feeds Snakemake's own HTML report."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from ifcn.config import load_config
from ifcn.data.datasets import convert_request
from ifcn.proposals.format import Proposals

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def snakemake(
    *args: str,
    cwd: Path = ROOT,
    check: bool = True,
    prefix: tuple[str, ...] = (),
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run snakemake (after ``prefix``, e.g. a setpriv command) under umask 022."""
    result = subprocess.run(
        [*prefix, str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {name: int(count) for name, count in rows if name != "total"}


def planned_blocks(output: str) -> list[dict]:
    """Each job of a dry run: its rule, whether it is local, its outputs and resources."""
    blocks = []
    for match in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n?)*)", output, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(3), re.M))
        blocks.append(
            {
                "rule": match.group(2),
                "local": bool(match.group(1)),
                "output": fields.get("output", ""),
                "gpu": int((re.findall(r"\bgpu=(\d+)", fields.get("resources", "")) or [0])[0]),
            }
        )
    return blocks


def _config_files_only(work: Path, run: str) -> bool:
    """Whether results/ holds only the config files the workflow writes as it is read: the
    run's and those of the ablation variants that differ from it (six for the shipped ones)."""
    files = sorted(p.relative_to(work) for p in (work / "results").rglob("*") if p.is_file())
    variants = [p for p in files if p.parent.parent == Path(f"results/{run}/ablation")]
    return (
        Path(f"results/{run}/config.yaml") in files
        and len(variants) == 6
        and all(p.name == "config.yaml" for p in files)
        and len(files) == 7
    )


def _workdir(tmp_path: Path, config: dict | None = None, **sections) -> Path:
    """A copy of the workflow with config/tiny.yaml (or ``config``), plus ``sections``, as
    run.yaml."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", work)
    shutil.copy(ROOT / "environment.yml", work)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    shutil.copytree(ROOT / "config", work / "config")
    if config is None:
        config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    return work


STAGES = {"train": 1, "merge": 2, "nms": 2, "classify_train": 1, "evaluate": 1, "figures": 1,
          "classify_predict": 1, "classify_evaluate": 1, "report": 1, "all": 1}  # fmt: skip
PLANS = {
    "config/config.yaml": {"synth": 1, "infer": 4, **STAGES},
    "config/voc2012.yaml": {"download": 2, "convert_train": 1, "convert_val": 1, "infer": 2,
                            **STAGES},
}  # fmt: skip


@pytest.mark.parametrize(
    "configfile,first_rules",
    [
        ("config/config.yaml", {"synth"}),
        ("config/voc2012.yaml", {"download", "convert_train", "convert_val"}),
        ("config/coco.yaml", {"download", "convert_train", "convert_val"}),
        ("config/pennfudan.yaml", {"download", "convert_train", "convert_val"}),
        ("config/borrat.yaml", {"convert_train", "convert_val"}),
        ("config/borrat-cpu.yaml", {"convert_train", "convert_val"}),
    ],
)
def test_dry_run_plans_the_whole_pipeline(tmp_path, configfile, first_rules):
    config = yaml.safe_load((ROOT / configfile).read_text())
    if config["data"].get("source"):  # relative to the checkout; the run happens elsewhere
        source = (ROOT / config["data"]["source"]).resolve()
        if not source.is_dir():
            pytest.skip(f"{source} is not here")
        config["data"]["source"] = str(source)
        configfile = tmp_path / "run.yaml"
        configfile.write_text(yaml.safe_dump(config))
    # the real-dataset configs want ImageNet weights, which this machine need not have: a dry
    # run plans anyway (the weights are checked when a run starts)
    result = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(result.stdout)
    assert first_rules <= jobs.keys()
    assert {"train", "infer", "merge", "nms", "evaluate", "figures", "report", "all"} <= jobs.keys()
    if configfile in PLANS:  # the jobs of the workflow before its logic moved into ifcn
        assert jobs == PLANS[configfile]
    if configfile == "config/voc2012.yaml":  # MNC's stage 3, as Table 4 trained it
        mnc = "classifier: vgg16 backbone, 2 paths x 2 fc 4096-d (ImageNet fc6/fc7)"
        assert f"run voc2012: {mnc}" in result.stderr
    # a dry run writes nothing but the config files of the run and its ablation variants
    run = load_config(configfile if Path(configfile).is_absolute() else ROOT / configfile)["run"]
    assert _config_files_only(tmp_path, run)


def _local_rules(configfile: str, workdir: Path) -> set[str]:
    """The rules the workflow declares local (a dry run does not show which jobs are)."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings(quiet={'all'})) as api:\n"
        "    wf = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path(sys.argv[1])]),"
        " snakefile=Path(sys.argv[2]), workdir=Path(sys.argv[3]))\n"
        "    print(json.dumps(sorted(wf._workflow._localrules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / configfile), str(ROOT / "Snakefile"), str(workdir)],
        env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_slurm_profile_gives_every_gpu_stage_a_gpu(tmp_path):
    result = snakemake(
        "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/coco.yaml",
        "--config", "report={ablations: true}", "--directory", str(tmp_path),
    )  # fmt: skip
    assert "torchrun --standalone --nproc-per-node 8 -m ifcn train" in result.stdout
    blocks = planned_blocks(result.stdout)
    gpu_rules = {"train", "infer", "classify_train", "classify_predict", "figures"}
    assert gpu_rules <= {block["rule"] for block in blocks}
    for block in blocks:
        if block["rule"] in gpu_rules:
            assert block["gpu"] >= 1, block
    variants = [
        b for b in blocks if b["rule"] in ("train", "infer") and "/ablation/" in b["output"]
    ]
    assert len(variants) == 6 * 2  # six variant trainings, one inference shard each
    # downloads need the internet, which compute nodes may lack: they run where snakemake runs
    assert "download" in {b["rule"] for b in blocks}
    assert _local_rules("config/coco.yaml", tmp_path / "api") == {"download"}


def test_the_plan_each_slurm_job_makes_again_imports_no_torch(tmp_path):
    """A cluster job parses the workflow and plans its job twice (the jobstep executor's
    snakemake, then the one its srun starts): torch and torchvision, seconds to import, stay
    with the stages that run a network, or every job pays for them twice before it starts
    (and the SLURM tests' jobs miss the executor's status checks)."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, "
        "ResourceSettings\n"
        "with SnakemakeApi(OutputSettings(quiet={'all'})) as api:\n"
        "    wf = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path(sys.argv[1])]),"
        " snakefile=Path(sys.argv[2]), workdir=Path(sys.argv[3]))\n"
        "    wf.dag(DAGSettings()).execute_workflow(executor='dryrun')\n"
        "    print(json.dumps(sorted(m for m in ('torch', 'torchvision') if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "config" / "tiny.yaml"), str(ROOT / "Snakefile"),
         str(tmp_path)],
        env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert planned_jobs(result.stderr)["train"] == 1  # it planned the run
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_invalid_config_fails_before_any_job_naming_the_file(tmp_path):
    work = _workdir(tmp_path, train={"iterz": 5})
    result = snakemake("--cores", "1", "--configfile", "run.yaml", cwd=work, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "iterz" in message and "Additional properties" in message
    assert f"{work / 'run.yaml'}: invalid config at 'train'" in message
    assert not (work / "resources").exists() and not (work / "results").exists()
    work2 = _workdir(tmp_path / "b", model={"k": "five"})
    result = snakemake("-n", "--configfile", "run.yaml", cwd=work2, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "'five' is not of type 'integer'" in message and "run.yaml" in message


@pytest.mark.slow
def test_config_overrides_apply_on_top_of_a_config_file(tmp_path):
    work = _workdir(tmp_path)
    snakemake(
        "--cores", "1", "--configfile", "run.yaml", "--config", "run=other", "nms={iou: 0.7}",
        "--", "results/other/train/model_final.pt", cwd=work,
    )  # fmt: skip
    assert (work / "results/other/train/model_final.pt").is_file()
    assert (work / "resources/other/train.json").is_file()  # data paths derive from the run
    written = load_config(work / "results" / "other" / "config.yaml")
    assert written["run"] == "other" and written["nms"]["iou"] == 0.7
    assert written["model"]["head_channels"] == 32  # from run.yaml
    assert not (work / "results/tiny").exists() and not (work / "resources/tiny").exists()
    jobs = planned_jobs(
        snakemake(
            "-n", "--configfile", "run.yaml", "--config", "run=other", "report={ablations: true}",
            cwd=work,
        ).stdout
    )  # fmt: skip
    assert jobs["ablation_k"] == jobs["ablation_head"] == 1 and jobs["train"] == 6
    assert jobs["report"] == 1 and "synth" not in jobs


def _coco_export(folder: Path, splits=("train", "valid")) -> Path:
    """A labelling tool's COCO export: <split>/_annotations.coco.json beside the images."""
    for split in splits:
        (folder / split).mkdir(parents=True)
        (folder / split / "_annotations.coco.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": []})
        )
    return folder


def test_own_coco_export_plans_every_output_under_the_run(tmp_path):
    export = _coco_export(tmp_path / "export")
    tiny = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config = {
        "run": "mine",
        "data": {"dataset": "coco", "source": str(export), "val_split": "valid"},
        **{key: tiny[key] for key in ("model", "train", "infer", "nms", "classify")},
    }
    work = _workdir(tmp_path, config)
    result = snakemake("-n", "-p", "--configfile", "run.yaml", cwd=work)
    blocks = planned_blocks(result.stdout)
    outputs = [path for b in blocks for path in b["output"].split(", ") if path]
    assert outputs and {b["rule"] for b in blocks} >= {"convert_train", "convert_val", "report"}
    for path in outputs:
        assert path.startswith(("resources/mine/", "results/mine/")), path
    assert "resources/mine/train.json" in outputs and "resources/mine/valid.json" in outputs
    # the registry turns the run's val split into the export's own `valid`
    assert "ifcn data convert --config results/mine/config.yaml --split val" in result.stdout
    request = convert_request(load_config(work / "results/mine/config.yaml")["data"], "val")
    assert (request["fmt"], request["root"], request["split"]) == ("coco", str(export), "valid")
    assert f"--image-root {export}/valid" in result.stdout
    # what the dataset needs is required, and the error names the key and the file
    del config["data"]["source"]
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", "run.yaml", cwd=work, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "invalid config at 'data.source': dataset 'coco' needs" in message
    assert "run.yaml" in message


def test_every_path_reaches_the_shell_quoted(tmp_path):
    """Data paths with spaces, quotes and command substitutions: each planned command, run by
    bash with `ifcn` recording its arguments, gets every path as one argument and runs none of
    what the paths say."""
    odd = 'it\'s "odd" $(touch X) `touch Y` ;touch Z'
    export, photos = tmp_path / f"export {odd}", tmp_path / f"photos {odd}"
    for folder in (export / "train", export / "val", photos):
        folder.mkdir(parents=True)
    (photos / "a photo.png").touch()  # the plan lists the photos, it reads none
    tiny = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config = {
        "run": "odd",
        "data": {"dataset": "coco", "source": str(export), "root": str(tmp_path / f"root {odd}")},
        "predict": {"images": str(photos)},
        **{key: tiny[key] for key in ("model", "train", "infer", "nms", "classify")},
    }
    work = _workdir(tmp_path, config)
    plan = snakemake("-n", "-p", "all", "predict", "--configfile", "run.yaml", cwd=work)
    commands = [
        line.removeprefix("Shell command: ")
        for line in plan.stdout.splitlines()
        if line.startswith("Shell command: ") and line != "Shell command: None"
    ]
    assert len(commands) == 20  # every job of the run and of the predict target
    (work / "results" / "odd" / "logs").mkdir(parents=True, exist_ok=True)
    args = tmp_path / "args"
    stub = 'ifcn() { printf "%s\\n" "$@" >> "$ARGS"; }; '
    for command in commands:
        subprocess.run(["bash", "-c", stub + command], cwd=work, env={**_env(), "ARGS": str(args)},
                       check=True)  # fmt: skip
    recorded = args.read_text().splitlines()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("X", "Y", "Z")]
    for path in (export / "train", tmp_path / f"root {odd}" / "val.json", photos):
        assert str(path) in recorded, path


@pytest.mark.parametrize("weights", ["missing-file", "torch-cache"])
def test_missing_imagenet_weights_fail_before_the_first_job(tmp_path, weights):
    path = tmp_path / "nowhere" / "vgg16.pth"
    model = {"backbone": "vgg16", "pretrained": True}
    model["weights"] = str(path) if weights == "missing-file" else None
    work = _workdir(tmp_path, model=model)
    env = _env(TORCH_HOME=str(tmp_path / "torch"))
    result = snakemake("--cores", "1", "--configfile", "run.yaml", cwd=work, check=False, env=env)
    message = result.stdout + result.stderr
    # before the first job: the DAG is built, no job starts, nothing is written
    assert result.returncode != 0 and "Job stats:" in message, message
    assert "pretrained weights for vgg16 not found" in message
    expected = path if weights == "missing-file" else tmp_path / "torch" / "hub" / "checkpoints"
    assert str(expected) in message
    assert "Finished jobid" not in message and not (work / "resources").exists()
    assert _config_files_only(work, "tiny")
    # a dry run still plans the whole pipeline
    plan = snakemake("-n", "--configfile", "run.yaml", cwd=work, env=env)
    assert {"train", "report"} <= planned_jobs(plan.stdout).keys()


@pytest.fixture(scope="module")
def touched_run(tmp_path_factory) -> Path:
    """config/tiny.yaml marked done by `snakemake --touch` (which records what each job ran
    with), then its outputs made, all of one age: a run whose reruns a dry run shows in seconds."""
    work = _workdir(tmp_path_factory.mktemp("touched"))
    blocks = planned_blocks(snakemake("-n", "--configfile", "run.yaml", cwd=work).stdout)
    snakemake("--touch", "--cores", "1", "--configfile", "run.yaml", cwd=work)
    for path in (work / p for block in blocks for p in block["output"].split(", ") if p):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1_000_000, 1_000_000))
    again = snakemake("-n", "--configfile", "run.yaml", cwd=work)
    assert "Nothing to be done" in again.stdout + again.stderr
    return work


@pytest.mark.parametrize(
    "change,expected",
    [
        ("nms={iou: 0.7}", {"nms": 2, "evaluate": 1, "classify_train": 1, "figures": 1,
                            "classify_predict": 1, "classify_evaluate": 1, "report": 1}),
        # keys the schema marks x-retrain: false retrain nothing
        ("train={log_period: 3}", {"report": 1}),
        ("classify={test_scale: 200}", {"classify_predict": 1, "classify_evaluate": 1,
                                        "report": 1}),
        ("classify={ap: voc}", {"classify_evaluate": 1, "report": 1}),
        ("data={first_n: 2}", {"evaluate": 1, "classify_evaluate": 1, "report": 1}),
    ],
)  # fmt: skip
def test_a_changed_setting_reruns_the_stages_that_read_it_and_those_after(
    touched_run, change, expected
):
    plan = snakemake("-n", "--configfile", "run.yaml", "--config", change, cwd=touched_run)
    assert planned_jobs(plan.stdout) == {**expected, "all": 1}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """config/tiny.yaml run to the end under umask 022 (tests copy it before changing it)."""
    work = _workdir(tmp_path_factory.mktemp("tiny"))
    snakemake("--cores", "2", "--configfile", "run.yaml", cwd=work)
    return work


def _copy(run: Path, tmp_path: Path) -> Path:
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)
    return work


def _plan_after(work: Path, change) -> dict[str, int]:
    config = yaml.safe_load((work / "run.yaml").read_text())
    change(config)
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    return planned_jobs(snakemake("-n", "--configfile", "run.yaml", cwd=work).stdout)


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_a_change_reruns_only_what_it_touches(tiny_run, tmp_path):
    run = tiny_run / "results" / "tiny"
    ar = json.loads((run / "val" / "ar.json").read_text())
    for n in ("10", "100"):
        assert 0.0 <= ar[f"AR@{n}"] <= 1.0
    assert ar["AR@10"] <= ar["AR@100"] and ar["num_images"] == 3
    report = (run / "report.md").read_text()
    ours, published = report.split("## Published figures")
    assert "AR@100" in ours and "AP@0.5" in ours and "## Training" in ours
    assert "38.9" not in ours and "38.9" in published  # the paper's numbers stand apart
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (run / link).is_file(), link
    assert "train/loss.png" in report and "figures/score_maps-1.png" in report
    segm = json.loads((run / "val" / "segm_eval.json").read_text())
    assert 0.0 <= segm["mAP@0.5"] <= 1.0 and 0.0 <= segm["mAP@0.7"] <= segm["mAP@0.5"]
    assert load_config(run / "config.yaml") == load_config(tiny_run / "run.yaml")
    # a second run has nothing to do
    again = snakemake("-n", "--configfile", "run.yaml", cwd=tiny_run)
    assert "Nothing to be done" in again.stdout + again.stderr
    work = _copy(tiny_run, tmp_path)
    # a new NMS threshold rewrites the run's config and reruns nms onwards only: the network
    # neither retrains nor runs again (the classifier trains on the training split's proposals)
    changed = _plan_after(work, lambda c: c["nms"].update(iou=0.7))
    assert changed == {
        "nms": 2, "evaluate": 1, "classify_train": 1, "classify_predict": 1,
        "classify_evaluate": 1, "figures": 1, "report": 1, "all": 1,
    }  # fmt: skip
    # a classifier setting reruns the classifier's prediction and the report only
    changed = _plan_after(
        work, lambda c: (c["nms"].update(iou=0.8), c["classify"].update(nms_iou=0.4))
    )
    assert changed == {"classify_predict": 1, "classify_evaluate": 1, "report": 1, "all": 1}
    # the report's own settings redraw the pictures and rewrite the report, nothing else
    changed = _plan_after(
        work, lambda c: (c["classify"].pop("nms_iou"), c.update(report={"pictures": 2}))
    )
    assert changed == {"figures": 1, "report": 1, "all": 1}


def _odd_photos(tmp_path: Path, count: int = 2) -> Path:
    """A photo folder named with braces, spaces, quotes and command substitutions that would
    create tmp_path/INJ, INJ2 and INJ3 if a shell ran them (the folder's name holds slashes:
    nested folders), with ``count`` small photos, "photo {0}.png", ..."""
    name = f'{{x}} it\'s "odd" $(touch {tmp_path}/INJ) `touch {tmp_path}/INJ2` ;touch INJ3'
    photos = tmp_path / name
    photos.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (150, 130), (40 * i, 90, 160)).save(photos / f"photo {{{i}}}.png")
    return photos


def _injected(tmp_path: Path, work: Path) -> list[Path]:
    payloads = ("INJ", "INJ2", "INJ3")
    return [p for p in (*tmp_path.rglob("INJ*"), *work.rglob("INJ*")) if p.name in payloads]


@pytest.mark.slow
def test_predict_target_gives_proposals_and_pictures_of_a_photo_folder(tiny_run, tmp_path):
    """For real, on a folder whose name would run commands in an unquoted shell line."""
    work = _copy(tiny_run, tmp_path)
    photos = _odd_photos(tmp_path / "odd")
    Image.new("RGB", (150, 130)).save(photos / "photo {0}.jpg")  # x.png and x.jpg stay apart
    config = yaml.safe_load((work / "run.yaml").read_text())
    config["predict"] = {"images": str(photos), "pictures": 3}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake("-n", "predict", "--configfile", "run.yaml", cwd=work).stdout)
    assert plan == {"predict_infer": 1, "predict_nms": 1, "predict_pictures": 1, "predict": 1}
    snakemake("--cores", "2", "predict", "--configfile", "run.yaml", cwd=work)
    out = work / "results" / "tiny" / "predict"
    names = sorted(p.name for p in photos.iterdir())
    with Proposals(out / "proposals.h5") as read:
        assert sorted(read.file_name(i) for i in read.image_ids) == names
        assert all(len(read.scores(i, 10)) > 0 for i in read.image_ids)
    assert sorted(p.name for p in (out / "pictures").glob("*.png")) == [f"{n}.png" for n in names]
    assert not _injected(tmp_path, work)
    config["predict"] = {"images": None}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    missing = snakemake("-n", "predict", "--configfile", "run.yaml", cwd=work, check=False)
    assert missing.returncode != 0 and "predict.images" in missing.stdout + missing.stderr


def test_adding_or_removing_a_photo_reruns_predict(touched_run, tmp_path):
    """What the photos are is a rerun trigger: a new photo (even one older than the outputs), a
    changed or a removed one reruns the prediction; once, a rerun said "Nothing to be done" and
    kept the old list. Names hold '{x}', which Snakemake would read as a wildcard in an input."""
    work = _copy(touched_run, tmp_path)
    photos = _odd_photos(tmp_path / "odd")
    config = yaml.safe_load((work / "run.yaml").read_text())
    config["predict"] = {"images": str(photos)}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake("-n", "predict", "--configfile", "run.yaml", cwd=work).stdout
    blocks = [b for b in planned_blocks(plan) if b["rule"].startswith("predict_")]
    assert {b["rule"] for b in blocks} == {"predict_infer", "predict_nms", "predict_pictures"}
    for photo in photos.iterdir():
        os.utime(photo, (999_000, 999_000))
    snakemake("--touch", "--cores", "1", "predict", "--configfile", "run.yaml", cwd=work)
    for block in blocks:
        path = work / block["output"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if block["rule"] == "predict_pictures" else path.touch()

    def jobs() -> dict[str, int]:
        result = snakemake("-n", "predict", "--configfile", "run.yaml", cwd=work)
        if "Nothing to be done" in result.stdout + result.stderr:
            return {}
        return planned_jobs(result.stdout)

    assert jobs() == {}
    Image.new("RGB", (150, 130)).save(photos / "new.jpg")
    os.utime(photos / "new.jpg", (999_000, 999_000))
    rerun = {"predict_infer": 1, "predict_nms": 1, "predict_pictures": 1, "predict": 1}
    assert jobs() == rerun
    (photos / "new.jpg").unlink()
    assert jobs() == {}
    Image.new("RGB", (150, 140)).save(photos / "photo {0}.png")  # changed in place
    assert jobs() == rerun
    (photos / "photo {0}.png").unlink()
    assert jobs() == rerun
    assert not _injected(tmp_path, work)


@pytest.mark.slow
def test_every_output_is_readable_by_others_under_umask_022(tiny_run):
    """Outputs get the permissions of a normally created file (0644 under umask 022)."""
    private = [
        f"{path.relative_to(tiny_run)} {oct(path.stat().st_mode & 0o777)}"
        for folder in ("results", "resources")
        for path in sorted((tiny_run / folder).rglob("*"))
        if path.is_file() and path.stat().st_mode & 0o777 != 0o644
    ]
    assert not private, private


@pytest.mark.slow
def test_snakemakes_html_report_collects_tables_plots_and_pictures(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path)
    snakemake("--configfile", "run.yaml", "--report", "report.html", cwd=work)
    html = (work / "report.html").read_text()
    embedded = {
        name: base64.b64decode(data)
        for name, data in re.findall(
            r"data:[\w/+.-]+;charset=[^;]*;filename=([^;]+);base64,([\w+/=]+)", html
        )
    }
    for name in ("ar.recall_iou.png", "loss.png", "proposals-1.png", "score_maps-1.png"):
        assert embedded[name][:8] == b"\x89PNG\r\n\x1a\n", name
    table = pd.read_csv(io.BytesIO(embedded["proposals_ar.csv"]))
    ar = json.loads((work / "results" / "tiny" / "val" / "ar.json").read_text())
    assert "AR@100 (%)" in table.columns
    assert table.loc[0, "AR@100 (%)"] == pytest.approx(100 * ar["AR@100"], abs=0.05)
    assert "segmentation_map.csv" in embedded


@pytest.mark.slow
def test_reruns_succeed_for_a_normal_user(tiny_run, tmp_path):
    """As `nobody` on a copy of a finished run it owns, with its own HOME: `--forcerun train`
    with a new nms.iou retrains from iteration 0 and reruns everything to the report; then the
    predict target and the data stage run too (every kind of step but downloads).

    CAP_DAC_READ_SEARCH lets the process read the root-owned virtualenv (under /root); writes
    are still checked as nobody's, which is what made protected() outputs fail for normal users.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become another user")
    work = _copy(tiny_run, tmp_path)
    photos = _odd_photos(tmp_path / "odd")
    config = yaml.safe_load((work / "run.yaml").read_text())
    config["nms"]["iou"] = 0.7
    config["predict"] = {"images": str(photos), "pictures": 2}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    home = tmp_path / "home"
    home.mkdir()
    for path in [work, home, *work.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")  # fmt: skip
    env = {**_env(HOME=str(home)), "USER": "nobody", "LOGNAME": "nobody"}
    train = work / "results/tiny/train"
    before = {name: (train / name).stat().st_mtime for name in ("model_final.pt", "train_log.csv")}
    forced = snakemake(
        "--cores", "2", "--configfile", "run.yaml", "--forcerun", "train", cwd=work,
        prefix=nobody, env=env,
    )  # fmt: skip
    jobs = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", forced.stdout + forced.stderr)
    assert {"train", "infer", "nms", "evaluate", "classify_train", "report"} <= set(jobs)
    log = (work / "results/tiny/logs/train.log").read_text()
    assert "the run was complete; its checkpoints moved to" in log and "steps 0..6" in log
    assert len(list(train.glob("checkpoints.old-*/model_*.pt"))) == 2
    assert pd.read_csv(train / "train_log.csv")["iteration"].tolist() == [2, 4, 6]
    for name, mtime in before.items():
        assert (train / name).stat().st_mtime > mtime, name
    assert load_config(work / "results/tiny/config.yaml")["nms"]["iou"] == 0.7
    assert "3 logged steps up to iteration 6" in (work / "results/tiny/report.md").read_text()
    snakemake("--cores", "2", "predict", "--configfile", "run.yaml", cwd=work, prefix=nobody,
              env=env)  # fmt: skip
    assert len(list((work / "results/tiny/predict/pictures").glob("*.png"))) == 2
    synth = snakemake(
        "--cores", "1", "--configfile", "run.yaml", "--forcerun", "synth", "--until", "synth",
        cwd=work, prefix=nobody, env=env,
    )  # fmt: skip
    assert "Rule: synth" in synth.stdout + synth.stderr
    outputs = [*(work / "results").rglob("*"), *(work / "resources").rglob("*")]
    assert not [p for p in outputs if p.stat().st_uid != 65534]
    assert not _injected(tmp_path, work)


def test_a_corrupt_lite0_weights_file_fails_before_the_first_job(tmp_path):
    """The preflight knows efficientnet_lite0: its file is checked, SHA-256 included."""
    fake = tmp_path / "weights" / "efficientnet-lite0-57934424.pth"
    fake.parent.mkdir()
    fake.write_bytes(b"not the weights")
    model = {"backbone": "efficientnet_lite0", "pretrained": True, "weights": str(fake)}
    work = _workdir(tmp_path, model=model)
    result = snakemake("--cores", "1", "--configfile", "run.yaml", cwd=work, check=False)
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats:" in message, message
    assert f"{fake}: its SHA-256 begins" in message and "not 57934424 as its name" in message
    assert "Finished jobid" not in message and not (work / "resources").exists()
