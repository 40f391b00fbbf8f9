"""SIGTERM (SLURM's and Snakemake's cancel) and SIGINT (Ctrl-C) end every stage the same way
(DESIGN §11, issue 23 item 18): exit status 143 / 130, one line on stderr, no temporary file,
no process of the stage left, and the output of an earlier run untouched.

Each stage runs as `python -m ifcn ...` in a process group of its own, on real inputs large
enough that it is still at work when it is signalled: as soon as its output's temporary exists,
or its worker processes run, or it has logged a training step. The signal goes to the whole
group, as SLURM, a terminal and Snakemake send it (and, for the stages with workers, to the
main process alone, as `kill PID` does).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ifcn import cli
from ifcn.classify.training import run_training as train_classifier
from ifcn.config import defaults, load_config
from ifcn.data.synth import generate_dataset
from ifcn.proposals.candidates import CandidateWriter
from ifcn.proposals.format import write_proposals
from ifcn.provenance import file_sha256
from tests.classify.oracle import classify_config, write_oracle_proposals
from tests.configs import ROOT, write_config
from tests.proposals.hand import candidate_attrs, score_map_candidates
from tests.proposals.runs import checkpoint, small_config

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [\w ]+: ")  # ifcn.progress lines in logs
TRAINING = re.compile(r"^ifcn [\w ]+: \d+ process\(es\) x 1 image per step on ")  # its start
PREVIOUS = b"an earlier run's output\n"
COPIES = 50  # the 12 validation images, listed this many times
PROPOSALS = 1000  # per image


def _messages(err: str) -> list[str]:
    """stderr without progress lines and the line that starts a training."""
    lines = re.split(r"[\r\n]", err)
    return [
        line
        for line in lines
        if line.strip() and "%|" not in line and not PROGRESS.match(line)
        and not TRAINING.match(line)
    ]  # fmt: skip


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(int(entry.name))
    return found


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp")) + sorted(folder.rglob("*.part"))


# --- the inputs ---------------------------------------------------------------------------------


def _label_map(anns: list[dict], height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    for index, ann in enumerate(anns, start=1):
        labels[mask_utils.decode(ann["segmentation"]) > 0] = index
    return labels


def _box_proposals(images: list[dict], per_image: int) -> list[dict]:
    """`per_image` random box masks per image, best first: arguments of ProposalWriter.add."""
    rng = np.random.default_rng(0)
    records = []
    for image in images:
        h, w = image["height"], image["width"]
        x0, y0 = rng.integers(0, w - 8, per_image), rng.integers(0, h - 8, per_image)
        bw = np.minimum(rng.integers(4, w // 2, per_image), w - x0)
        bh = np.minimum(rng.integers(4, h // 2, per_image), h - y0)
        boxes = np.stack([x0, y0, bw, bh], 1).astype(np.float64)
        rles = mask_utils.frPyObjects(boxes, h, w)
        boxes[:, 2:] += boxes[:, :2]
        records.append({
            "image_id": image["id"], "file_name": image["file_name"], "height": h, "width": w,
            "scores": np.sort(rng.random(per_image).astype(np.float32))[::-1], "boxes": boxes,
            "rles": [r["counts"] for r in rles], "scales": np.zeros(per_image, np.int8),
        })  # fmt: skip
    return records


@dataclass
class World:
    root: Path
    paths: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return str(self.paths[key])

    def args(self, command: str, out: Path) -> list[str]:
        """`command`'s words with the paths filled in (none of them holds a space)."""
        return command.format(**self.paths, out=out).split()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Every stage's inputs: a synthetic set whose 12 validation images are listed 50 times
    (symbolic links), 1000 box proposals per image, candidates, shards, a Penn-Fudan folder, a
    tiny proposal model, a classifier and a long training log."""
    root = tmp_path_factory.mktemp("signals")
    w = World(root)
    data = root / "synth"
    generate_dataset(data, defaults("data.synth") | {"seed": 3, "num_train": 12, "num_val": 12,
                     "min_side": 128, "max_side": 160, "max_objects": 4})  # fmt: skip
    val = json.loads((data / "val.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in val["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    # the validation images listed COPIES times (ids 1..600), and a Penn-Fudan folder of them
    many, fudan = root / "many", root / "PennFudanPed"
    many.mkdir()
    (fudan / "PNGImages").mkdir(parents=True)
    (fudan / "PedMasks").mkdir()
    for image in val["images"]:
        labels = _label_map(by_image.get(image["id"], []), image["height"], image["width"])
        Image.fromarray(labels).save(root / f"mask-{image['id']}.png")
    images, anns = [], []
    for _ in range(COPIES):
        for image in val["images"]:
            image_id = len(images) + 1
            name = f"{image_id:05d}.png"
            (many / name).symlink_to(data / "images" / image["file_name"])
            (fudan / "PNGImages" / name).symlink_to(data / "images" / image["file_name"])
            (fudan / "PedMasks" / f"{image_id:05d}_mask.png").symlink_to(
                root / f"mask-{image['id']}.png"
            )
            images.append({**image, "id": image_id, "file_name": name})
            for ann in by_image.get(image["id"], []):
                anns.append({**ann, "id": len(anns) + 1, "image_id": image_id})
    w.paths["images"], w.paths["fudan"] = many, fudan
    w.paths["gt"] = root / "many.json"
    w.paths["gt"].write_text(json.dumps({**val, "images": images, "annotations": anns}))

    # proposals of those images, and COCO results of their best 100 (classify evaluate)
    records = _box_proposals(images, PROPOSALS)
    attrs = {"config": {}, "checkpoint_sha256": "0" * 64, "dataset": w["gt"],
             "dataset_sha256": file_sha256(w["gt"]), "scales": [1], "k": 5, "m": 21}  # fmt: skip
    w.paths["proposals"] = root / "proposals.h5"
    write_proposals(w.paths["proposals"], records, attrs)
    results = [
        {"image_id": r["image_id"], "category_id": anns[0]["category_id"],
         "segmentation": {"size": [r["height"], r["width"]], "counts": c.decode()},
         "score": float(s)}
        for r in records for c, s in zip(r["rles"][:100], r["scores"][:100], strict=True)
    ]  # fmt: skip
    w.paths["results"] = root / "results.json"
    w.paths["results"].write_text(json.dumps(results))

    # candidates (nms) and the two shards of another inference (merge)
    w.paths["candidates"] = root / "candidates.h5"
    with CandidateWriter(w.paths["candidates"], candidate_attrs()) as writer:
        for image_id in range(1, 201):
            writer.add(score_map_candidates(image_id, 400, height=120, width=160))
    for index in range(2):
        path = w.paths[f"shard{index}"] = root / f"candidates-{index}.h5"
        with CandidateWriter(path, candidate_attrs()) as writer:
            for image_id in range(index * 1500 + 1, (index + 1) * 1500 + 1):
                writer.add(score_map_candidates(image_id, 400, height=120, width=160))
        with h5py.File(path, "r+") as f:
            f.attrs["shard"] = f"{index}/2"

    # a tiny proposal model (infer), a config to train for long, a classifier
    (root / "model").mkdir()
    w.paths["infer_config"], infer_config = small_config(root / "model")
    w.paths["model"] = checkpoint(root / "model", infer_config)
    (root / "train").mkdir()
    w.paths["train_config"] = write_config(
        root / "train", data, train={"iters": 10000, "log_period": 1, "checkpoint_period": 5000}
    )
    (root / "classify").mkdir()
    w.paths["classify_config"] = classify_config(
        root / "classify", data, iters=10000, log_period=1, checkpoint_period=5000
    )
    write_oracle_proposals(data / "train.json", root / "train_proposals.h5", 0)
    w.paths["train_proposals"] = root / "train_proposals.h5"
    w.paths["train_gt"] = data / "train.json"
    w.paths["classifier"] = train_classifier(
        load_config(classify_config(root, data, iters=1)), w.paths["train_proposals"],
        w.paths["train_gt"], root / "classifier", device_name="cpu", show_progress=False,
    )  # fmt: skip

    # a run's ar.json and a training log of two million rows (report)
    write_oracle_proposals(data / "val.json", root / "val_proposals.h5", 1)
    w.paths["ar"] = root / "ar" / "ar.json"
    evaluate = f"evaluate --gt {data}/val.json --proposals {root}/val_proposals.h5 --workers 1"
    assert cli.main([*evaluate.split(), "--out", w["ar"]]) == 0
    rows = 2_000_000
    steps = np.arange(1, rows + 1)
    loss = 1.0 / np.sqrt(steps)
    w.paths["train_log"] = root / "train_log.csv"
    pd.DataFrame({"iteration": steps, "loss": loss, "loss_objectness": loss / 2,
                  "loss_mask": loss / 2}).to_csv(w.paths["train_log"], index=False)  # fmt: skip
    return w


# --- the stages ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """How to run a stage, when it is at work, and what it writes (`out`: the output file whose
    earlier version must survive, or the folder it writes into)."""

    command: str  # its arguments, with {name} for the paths of World and {out}
    ready: Callable[[subprocess.Popen, Path], bool]
    out: str | None = None
    workers: bool = False  # signalled to the main process alone too
    stopped_by_sigterm: str | None = None  # its own line for SIGTERM (training)


def _has_workers(count: int) -> Callable[[subprocess.Popen, Path], bool]:
    return lambda task, folder: len(_group(task.pid)) > count


def _loaded(fragment: str) -> Callable[[subprocess.Popen, Path], bool]:
    """The process has mapped a shared library whose path holds `fragment` (an import of it)."""

    def ready(task: subprocess.Popen, folder: Path) -> bool:
        try:
            return fragment in Path(f"/proc/{task.pid}/maps").read_text()
        except OSError:
            return False

    return ready


def _all(*conditions: Callable) -> Callable[[subprocess.Popen, Path], bool]:
    return lambda task, folder: all(c(task, folder) for c in conditions)


def _temporary(task: subprocess.Popen, folder: Path) -> bool:
    """An output's temporary exists: the stage is writing it."""
    return bool(list(folder.rglob(".*.tmp")))


def _logged(name: str, rows: int) -> Callable[[subprocess.Popen, Path], bool]:
    def ready(task: subprocess.Popen, folder: Path) -> bool:
        log = folder / "run" / name
        return log.exists() and len(log.read_text().splitlines()) > rows

    return ready


CHECKPOINT_LINE = (
    r"ifcn {}: error: \S+: stopped by SIGTERM at iteration \d+; checkpoint \S+ written; "
    r"rerun with --resume auto to continue"
)

STAGES: dict[str, Stage] = {
    "data synth": Stage(
        "data synth --out {out}/synth --num-train 2000 --num-val 10 --workers 2",
        _all(_has_workers(2), lambda task, o: len(list(o.glob("synth/images/*.png"))) > 4),
        out="synth/train.json",
    ),
    "data convert": Stage(
        "data convert --format pennfudan --root {fudan} --split all --workers 2 "
        "--out {out}/fudan.json",
        _has_workers(2),
        out="fudan.json",
    ),
    "data check": Stage(
        "data check --json {gt} --images {images} --workers 2 --out {out}/check.csv",
        _has_workers(2),
        out="check.csv",
    ),
    "train": Stage(
        "train --config {train_config} --out {out}/run --device cpu",
        _logged("train_log.csv", 2),
        stopped_by_sigterm=CHECKPOINT_LINE.format("train"),
    ),
    "infer": Stage(
        "infer --config {infer_config} --checkpoint {model} --images {gt} --image-root {images} "
        "--device cpu --workers 2 --out {out}/candidates.h5",
        _all(_temporary, _has_workers(2)),
        out="candidates.h5",
        workers=True,
    ),
    "merge": Stage(
        "merge --inputs {shard0} {shard1} --out {out}/merged.h5",
        _temporary,
        out="merged.h5",
    ),
    "nms": Stage(
        "nms --candidates {candidates} --top-n 400 --mask-threshold 0.01 --workers 2 "
        "--out {out}/proposals.h5",
        _all(_temporary, _has_workers(2)),
        out="proposals.h5",
        workers=True,
    ),
    "export": Stage(
        "export --proposals {proposals} --out {out}/results.json",
        _temporary,
        out="results.json",
    ),
    "evaluate": Stage(
        "evaluate --gt {gt} --proposals {proposals} --workers 2 --out {out}/ar.json",
        _has_workers(3),  # the plotting process and two workers
        out="ar.json",
        workers=True,
    ),
    "viz": Stage(
        "viz --each --proposals {proposals} --image-root {images} --out {out}/pictures",
        lambda task, o: bool(list(o.glob("pictures/*.png"))),
    ),
    "classify train": Stage(
        "classify train --config {classify_config} --proposals {train_proposals} "
        "--gt {train_gt} --out {out}/run --device cpu",
        _logged("classify_log.csv", 2),
        stopped_by_sigterm=CHECKPOINT_LINE.format("classify train"),
    ),
    "classify predict": Stage(
        "classify predict --checkpoint {classifier} --proposals {proposals} --images {gt} "
        "--image-root {images} --workers 2 --device cpu --out {out}/segm.json",
        _has_workers(2),
        out="segm.json",
        workers=True,
    ),
    "classify evaluate": Stage(
        "classify evaluate --gt {gt} --results {results} --out {out}/segm_eval.json",
        _loaded("pycocotools"),
        out="segm_eval.json",
    ),
    "report": Stage(
        "report --config {train_config} --ar {ar} --train-log {train_log} "
        "--loss-plot {out}/loss.png --out {out}/report.md",
        _loaded("matplotlib"),  # drawing the loss curve (the PNG is written at once after)
        out="report.md",
    ),
}

CASES = [
    pytest.param(name, signum, alone, id=f"{name.replace(' ', '-')}-{signum.name}{alone}")
    for name, stage in STAGES.items()
    for signum, alone in [(signal.SIGTERM, ""), (signal.SIGINT, ""),
                          *([(signal.SIGTERM, "-main-alone")] if stage.workers else [])]
]  # fmt: skip


# `python -m ifcn`, whose threads' stacks SIGUSR1 prints: what a stage that hangs was doing
STAGE_WITH_STACKS = (
    "import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "runpy.run_module('ifcn', run_name='__main__', alter_sys=True)"
)


def _stderr_or_stacks(task: subprocess.Popen, timeout: float):
    """The stage's stderr once it ends; if it hangs, a failure showing its threads' stacks
    (each process prints them on SIGUSR1: faulthandler)."""
    try:
        return task.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(task.pid, signal.SIGUSR1)
        time.sleep(2)
        os.killpg(task.pid, signal.SIGKILL)
        stacks = task.communicate()[1]
        text = stacks if isinstance(stacks, str) else stacks.decode(errors="replace")
        pytest.fail("the stage hangs; its threads:\n" + text[-20000:])


def _run_until_ready(stage: Stage, command: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        env.pop(name, None)
    task = subprocess.Popen([sys.executable, "-c", STAGE_WITH_STACKS, *command], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not stage.ready(task, out):
        if task.poll() is not None:
            raise AssertionError(f"it ended before it was signalled: {task.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(task.pid, signal.SIGKILL)
            raise AssertionError("it never got to work")
        time.sleep(0.01)
    return task


@pytest.mark.parametrize(("name", "signum", "alone"), CASES)
def test_a_signal_stops_the_stage_with_one_line_and_leaves_nothing(
    world, tmp_path, name, signum, alone
):
    stage = STAGES[name]
    out = tmp_path / "out"
    out.mkdir()
    if stage.out is not None:
        (out / stage.out).parent.mkdir(parents=True, exist_ok=True)
        (out / stage.out).write_bytes(PREVIOUS)
    task = _run_until_ready(stage, world.args(stage.command, out), out)
    try:
        if alone:
            os.kill(task.pid, signum)
        else:
            os.killpg(task.pid, signum)
        err = _stderr_or_stacks(task, 120)
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    err = err.decode()
    expected = f"ifcn {name}: stopped by {signum.name}"
    messages = _messages(err)
    assert task.returncode == 128 + signum, err[-3000:]
    if signum == signal.SIGTERM and stage.stopped_by_sigterm:
        assert len(messages) == 1 and re.fullmatch(stage.stopped_by_sigterm, messages[0]), err
    else:
        assert messages == [expected], err[-3000:]
    deadline = time.monotonic() + 10
    while _group(task.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group(task.pid) == [], "processes of the stage outlived it"
    assert _temporaries(out) == []
    if stage.out is not None:
        assert (out / stage.out).read_bytes() == PREVIOUS


@pytest.mark.parametrize(
    ("command", "library"),
    [
        ("merge --inputs {shard0} {shard1} --out {out}/merged.h5", "libtorch"),
        ("evaluate --gt {gt} --proposals {proposals} --out {out}/ar.json", "numpy"),
        ("ablation table --ar {ar} --variants k=1 --out {out}/ablation.csv", "numpy"),
    ],
    ids=["merge", "evaluate", "ablation"],
)
def test_sigint_while_the_stage_imports_is_one_line(world, tmp_path, command, library):
    """Ctrl-C while torch or numpy loads (before `main` runs): one line and 130."""
    stage = Stage(command, _loaded(library))
    task = _run_until_ready(stage, world.args(command, tmp_path), tmp_path)
    os.killpg(task.pid, signal.SIGINT)
    _, err = task.communicate(timeout=120)
    assert task.returncode == 130, err.decode()
    assert _messages(err.decode()) == [f"ifcn {command.split()[0]}: stopped by SIGINT"]
    assert _temporaries(tmp_path) == []


# --- the machinery, on a bare pool: many stops at random moments --------------------------------

POOL_STAGE = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the stacks, if the test finds it hung
from ifcn import signals
from ifcn.pool import Pool  # every stage's: its workers' own stops must not read as deaths

def work(x):
    return [sum(range(20000))] * 10

restore = signals.install()
try:
    with Pool(2, signals.worker_process) as pool:
        print("ready", flush=True)
        for _ in pool.imap(work, range(10**7), chunksize=8):
            pass
except signals.Stopped as stop:
    print(f"stopped by {stop.name}", file=sys.stderr)
    sys.exit(stop.exit_status)
"""


@pytest.mark.parametrize(
    ("signum", "alone"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGTERM-group", "SIGINT-group", "SIGTERM-main-alone"],
)
def test_a_pool_stopped_at_random_moments_always_ends_at_once(signum, alone):
    """The races of a stop against a pool's queues and locks (a worker killed holding one, a
    message cut short, a signal taken by another thread or just before a wait): 12 stops."""
    rng = np.random.default_rng(int(signum) + alone)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(12):
        task = subprocess.Popen([sys.executable, "-c", POOL_STAGE], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip
        try:
            assert task.stdout.readline() == "ready\n"
            time.sleep(rng.random() * 0.3)
            (os.kill if alone else os.killpg)(task.pid, signum)
            err = _stderr_or_stacks(task, 60)
        finally:
            if task.poll() is None:
                os.killpg(task.pid, signal.SIGKILL)
        assert task.returncode == 128 + signum and err == f"stopped by {signum.name}\n", err
        assert _group(task.pid) == []


SPAWNED_WORKER = """
import multiprocessing, os, signal, sys, time
from ifcn import signals

class Finalised:
    def __del__(self):  # the pool's SIGTERM lands here, where Python cannot raise
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

def target():
    Finalised()
    print("alive after the swallowed stop", flush=True)
    time.sleep(30)

signals.worker_process()  # as a spawned pool worker starts: no handlers inherited
multiprocessing.Process(target=target).run()  # its target, run here, as the worker runs it
"""


def test_a_spawned_workers_stop_swallowed_in_a_finaliser_still_ends_it_quietly():
    """A spawned worker inherits no unraisable hook: its stop, raised inside a `__del__`, was
    printed as a traceback and then never raised again, and the worker lived on (its pool's
    shutdown waits for it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SPAWNED_WORKER], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (143, ""), done.stderr
    assert time.monotonic() - start < 20


FORKED_AT_ONCE = """
import ctypes, functools, multiprocessing, os, signal, sys
from ifcn import signals
from ifcn.reporting.plots import Plotter
from ifcn.training.launch import fork_ranks

parent = os.getpid()
restore = signals.install()
# each child forked from here on is sent a SIGTERM by its last fork hook (C code, which runs no
# handler): Python handles it in the frames the child inherited, as soon as os.fork() returns
raise_signal = getattr(ctypes.CDLL(None), "raise")
os.register_at_fork(after_in_child=functools.partial(raise_signal, signal.SIGTERM))
status = None
try:
    if sys.argv[1] == "plotter":
        with Plotter():
            pass
    elif sys.argv[1] == "process":
        child = multiprocessing.get_context("fork").Process(target=print)
        child.start()
        child.join()
        status = child.exitcode
    else:
        status = fork_ranks(2, lambda: 0)
finally:
    print("after the fork:", "the parent" if os.getpid() == parent else "A CHILD", flush=True)
restore()
print(status)
"""


@pytest.mark.parametrize("kind", ["plotter", "process", "ranks"])
def test_a_child_stopped_as_it_forks_never_runs_its_parents_code(kind):
    """CI's hang: a Plotter's child, stopped by its parent's clean-up as it started, raised
    SystemExit in the frames it inherited (before multiprocessing's launch enters its `try`),
    unwound into its parent's code and went on as a second pytest, which its parent waited for."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FORKED_AT_ONCE, kind], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    status = {"plotter": "None", "process": "143", "ranks": "143"}[kind]
    expected = (0, f"after the fork: the parent\n{status}\n", "")
    assert (done.returncode, done.stdout, done.stderr) == expected


LOCK_TAKEN_AS_THE_STOP_COMES = """
import multiprocessing, os, signal, sys, threading, time
from ifcn import signals

restore = signals.install()
if sys.argv[1] == "threading":
    lock = threading.Lock()
    guard = threading.Condition(lock)  # the with of Condition.__enter__, as a pool's results
else:
    lock = guard = multiprocessing.Lock()  # the with of SemLock.__enter__, as a pool's queues
lock.acquire()


def holder():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    time.sleep(0.3)  # the main thread waits for the lock, in the wrapper's __enter__
    os.kill(os.getpid(), signal.SIGTERM)  # taken by this thread: acted on by the main thread
    time.sleep(0.3)  # as soon as it runs Python again, which is with the lock just taken
    lock.release()


signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
threading.Thread(target=holder).start()
try:
    with guard:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        time.sleep(2)
    print("not stopped")
except signals.Stopped:
    print("stopped")
free = lock.acquire(timeout=1)
print("the lock is free" if free else "THE LOCK IS STILL HELD")
restore()
"""


@pytest.mark.parametrize("kind", ["threading", "multiprocessing"])
def test_a_stop_as_a_lock_is_taken_leaves_it_free(kind):
    """CI's other hang: the stop raised in `threading.Condition.__enter__` just after it took the
    lock, before the `with` began, left the lock of the pool's results held; the pool's result
    handler waited for it and `Pool.terminate` for the result handler, forever."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOCK_TAKEN_AS_THE_STOP_COMES, kind], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\nthe lock is free\n", "")


def test_install_and_restore_leave_the_process_as_it_was():
    from ifcn import signals

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    threads = threading.active_count()
    restore = signals.install()
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT)
    assert threading.active_count() == threads + 1  # the forwarder
    restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert threading.active_count() == threads
    assert signal.set_wakeup_fd(-1) == -1
    # a forked pool afterwards works: the fork hook once closed the numbers of the forwarder's
    # closed pipe in the child, by then the pool's own pipes, and the pool waited forever
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map_async(abs, [-1, -2, -3]).get(timeout=30) == [1, 2, 3]


class _SlowArchive(BaseHTTPRequestHandler):
    """An archive that arrives a little at a time, as over a slow link."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(50 << 20))
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(3200):
                self.wfile.write(bytes(16 << 10))
                time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_download_stops_with_one_line_and_keeps_its_part_to_resume(tmp_path, signum):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowArchive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    mirror = f"http://127.0.0.1:{server.server_address[1]}"
    stage = Stage(
        f"data download --dataset pennfudan --mirror {mirror} --quiet --out {{out}}",
        lambda task, o: any(p.stat().st_size for p in o.glob("*.part")),
    )
    try:
        task = _run_until_ready(stage, stage.command.format(out=out).split(), out)
        os.killpg(task.pid, signum)
        err = _stderr_or_stacks(task, 120)
    finally:
        server.shutdown()
    assert task.returncode == 128 + signum, err.decode()
    assert _messages(err.decode()) == [f"ifcn data download: stopped by {signum.name}"]
    assert _group(task.pid) == []
    assert sorted(p.name for p in out.iterdir()) == ["PennFudanPed.zip.part"]  # resumed later
