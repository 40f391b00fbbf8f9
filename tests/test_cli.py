"""The `ifcn` command line: help a user can read, unknown commands, and OS errors in one line."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pycocotools.coco import COCO

import ifcn
from ifcn import cli
from ifcn.errors import IfcnError
from tests.configs import ROOT
from tests.tmpfs import tmpfs

DEVELOPER_NOTES = ("DESIGN", "tests plug in", "monkeypatch")


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def help_text(capsys, *words: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*words, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def example_lines(example: str) -> list[list[str]]:
    """The example's commands, continuation lines joined, as argument lists."""
    return [shlex.split(line) for line in example.replace("\\\n", " ").splitlines()]


def test_every_command_has_a_summary_and_an_example():
    assert set(cli.HELP) == set(cli.COMMANDS)
    for words, (summary, example) in cli.HELP.items():
        assert summary and "\n" not in summary and len(summary) <= 60, words
        assert all(line[: 1 + len(words)] == ["ifcn", *words] for line in example_lines(example))


@pytest.mark.parametrize("words", list(cli.COMMANDS), ids=" ".join)
def test_stage_help_shows_its_summary_and_example_and_no_developer_notes(capsys, words):
    text = help_text(capsys, *words)
    summary, example = cli.HELP[words]
    assert text.startswith(f"usage: ifcn {' '.join(words)} ")
    assert summary[1:] in text
    assert "example:\n" in text and example.splitlines()[0] in text
    for note in DEVELOPER_NOTES:
        assert note not in text


@pytest.mark.parametrize("words", list(cli.COMMANDS), ids=" ".join)
def test_examples_are_valid_invocations(words):
    """Each example parses with its command's own parser: no stale or missing option."""
    module = importlib.import_module(cli.COMMANDS[words])
    for line in example_lines(cli.HELP[words][1]):
        module.get_args_parser().parse_args(line[1 + len(words) :])


@pytest.mark.parametrize("words", list(cli.COMMANDS), ids=" ".join)
def test_every_command_takes_the_runs_config_and_checks_it_first(tmp_path, capsys, words):
    """`--config` on every command (the workflow passes the run's config.yaml to each): a bad
    one fails before any other input is read, in one line naming the file and the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {k: 0}\n")
    line = example_lines(cli.HELP[words][1])[0][1 + len(words) :]
    code, out, err = run_cli(capsys, *words, *line, "--config", bad)
    assert code == 2, (out, err)
    assert err == f"ifcn {' '.join(words)}: error: {bad}: invalid config at 'model.k': " \
        "0 is less than the minimum of 1\n"  # fmt: skip


def test_top_level_help_lists_every_command_with_its_summary(capsys):
    code, out, err = run_cli(capsys, "--help")
    assert code == 0 and not err
    for words, (summary, _) in cli.HELP.items():
        assert any(line.split() == [*words, *summary.split()] for line in out.splitlines()), words
    assert "exit status" in out
    for note in DEVELOPER_NOTES:
        assert note not in out


def test_no_command_prints_the_usage_and_fails(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2 and not out and err.startswith("usage: ifcn <command>")


def test_data_help_lists_the_data_commands(capsys):
    code, out, err = run_cli(capsys, "data", "--help")
    assert code == 0 and not err
    listed = [line.split()[:2] for line in out.splitlines() if line.startswith("  data ")]
    assert listed == [list(words) for words in cli.COMMANDS if words[0] == "data"]
    code, out, err = run_cli(capsys, "data")
    assert code == 2 and not out and "data synth" in err


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["nmss"], "ifcn nms"),
        (["evalute", "--gt", "x.json"], "ifcn evaluate"),
        (["data", "synt"], "ifcn data synth"),
        (["clasify", "train"], "ifcn classify train"),
    ],
)
def test_an_unknown_command_suggests_the_closest(capsys, argv, suggestion):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1
    typed = " ".join(w for w in argv[:2] if not w.startswith("-"))
    assert f"unknown command '{typed}'" in err and f"did you mean '{suggestion}'?" in err


def test_an_unknown_command_without_a_close_one_says_so(capsys):
    code, _, err = run_cli(capsys, "xyzzy")
    assert code == 2 and "unknown command 'xyzzy'" in err and "did you mean" not in err
    code, _, err = run_cli(capsys, "data", "xyzzy")
    assert code == 2 and "the data commands are synth, download, convert, check" in err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out == f"ifcn {ifcn.__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "ifcn", "-V"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout == out


# --- failures: one line for bad input and OS errors, a traceback for bugs ---------------------


@pytest.fixture
def fake_stage(monkeypatch):
    """`ifcn fake --out PATH` whose main raises the exception it is given."""

    def install(exc: BaseException) -> None:
        module = types.ModuleType("fake_stage")

        def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
            parser = argparse.ArgumentParser(add_help=add_help)
            parser.add_argument("--out")
            return parser

        def main(args: argparse.Namespace) -> None:
            raise exc

        module.get_args_parser, module.main = get_args_parser, main
        monkeypatch.setitem(sys.modules, "fake_stage", module)
        monkeypatch.setitem(cli.COMMANDS, ("fake",), "fake_stage")

    return install


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/out"),
            "/data/out: Permission denied",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/tmp/a.tmp", None, "/data/a.h5"),
            "/tmp/a.tmp -> /data/a.h5: Invalid cross-device link",
        ),
        # a write to a full disk names no file: the output being written is the one
        (OSError(errno.ENOSPC, "No space left on device"), "out.h5: No space left on device"),
        # h5py puts the file name in its message
        (
            FileNotFoundError(
                errno.ENOENT,
                "Unable to synchronously open file (unable to open file: name = 'c.h5', "
                "errno = 2, error message = 'No such file or directory', flags = 0)",
            ),
            "c.h5: No such file or directory",
        ),
        # a DataLoader worker's error comes back with the worker's traceback in its message
        (
            PermissionError(
                "Caught PermissionError in DataLoader worker process 0.\nOriginal Traceback"
                " (most recent call last):\n  File 'x.py', line 1\n"
                "PermissionError: [Errno 13] Permission denied: 'img.png'\n"
            ),
            "PermissionError: [Errno 13] Permission denied: 'img.png'",
        ),
        (IfcnError("not a COCO instances JSON", "gt.json"), "gt.json: not a COCO instances JSON"),
    ],
)
def test_bad_input_and_os_errors_are_one_line_and_exit_2(capsys, fake_stage, exc, line):
    fake_stage(exc)
    code, out, err = run_cli(capsys, "fake", "--out", "out.h5")
    assert (code, out, err) == (2, "", f"ifcn fake: error: {line}\n")


def test_a_bug_keeps_its_traceback(fake_stage):
    fake_stage(RuntimeError("index out of range"))
    with pytest.raises(RuntimeError, match="index out of range"):
        cli.main(["fake"])


def test_a_closed_pipe_ends_quietly(capsys, fake_stage):
    fake_stage(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert run_cli(capsys, "fake") == (1, "", "")


# --- real stages writing where they cannot ----------------------------------------------------


@pytest.fixture(scope="module")
def results_json(tiny_data, tmp_path_factory) -> Path:
    """The validation ground truth as a COCO results JSON (score 1): input for evaluate."""
    coco = COCO(str(tiny_data / "val.json"))
    results = []
    for ann in coco.dataset["annotations"]:
        rle = coco.annToRLE(ann)
        rle["counts"] = (
            rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        )
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    path = tmp_path_factory.mktemp("results") / "results.json"
    path.write_text(json.dumps(results))
    return path


def stage_writing_to(out: Path, tiny_data: Path, tiny_config: Path, results: Path) -> dict:
    """Argument lists of several stages whose only problem is the output path `out`."""
    val = tiny_data / "val.json"
    images = tiny_data / "images"
    return {
        "data synth": ["data", "synth", "--out", out / "synth", "--num-train", 1, "--num-val", 1],
        "data convert": [
            *("data", "convert", "--format", "coco", "--json", val, "--images", images),
            *("--out", out / "val.json"),
        ],
        "data check": ["data", "check", "--json", val, "--images", images, "--out", out / "c.csv"],
        "train": ["train", "--config", tiny_config, "--out", out / "train", "--iters", 1],
        "evaluate": ["evaluate", "--gt", val, "--proposals", results, "--out", out / "ar.json"],
        "classify evaluate": [
            *("classify", "evaluate", "--gt", val, "--results", results),
            *("--out", out / "segm_eval.json"),
        ],
        "ablation": [
            *("ablation", "config", "--config", tiny_config, "--variant", "k=3"),
            *("--out", out / "config.yaml"),
        ],
    }


def assert_one_error_line(err: str, prog: str, path: Path, reasons: tuple[str, ...]) -> None:
    """One line from ifcn on stderr (progress bars aside), naming `path`, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ifcn ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and str(path) in lines[0], lines[0]
    assert any(reason in lines[0] for reason in reasons), lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


STAGES = ["data synth", "data convert", "data check", "train", "evaluate", "classify evaluate"]
STAGES += ["ablation"]


@pytest.mark.parametrize("stage", STAGES)
def test_an_output_below_a_file_is_one_line(
    capsys, tmp_path, tiny_data, tiny_config, results_json, stage
):
    """Works for any user, root included: nothing can be created below a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = stage_writing_to(blocker / "out", tiny_data, tiny_config, results_json)[stage]
    code, _, err = run_cli(capsys, *argv)
    prog = "ifcn ablation" if stage == "ablation" else f"ifcn {stage}"
    assert code == 2
    assert_one_error_line(err, prog, blocker, ("Not a directory", "File exists"))
    assert blocker.read_text() == ""


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one may write to: a read-only tmpfs as root (for whom chmod changes
    nothing), a folder without write permission otherwise."""
    folder = tmp_path / "read-only"
    if os.geteuid() != 0:
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    with tmpfs(folder, "size=64k,ro"):
        yield folder


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs filled up by one file (root only)."""
    folder = tmp_path / "full"
    with tmpfs(folder, "size=64k"):
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as exc_info:
            while True:
                os.write(fd, bytes(4096))
        os.close(fd)
        assert exc_info.value.errno == errno.ENOSPC
        yield folder


@pytest.mark.parametrize("stage", ["data convert", "train", "evaluate", "ablation"])
def test_a_read_only_folder_is_one_line(
    capsys, read_only_folder, tiny_data, tiny_config, results_json, stage
):
    argv = stage_writing_to(read_only_folder, tiny_data, tiny_config, results_json)[stage]
    code, _, err = run_cli(capsys, *argv)
    prog = "ifcn ablation" if stage == "ablation" else f"ifcn {stage}"
    assert code == 2
    assert_one_error_line(
        err, prog, read_only_folder, ("Read-only file system", "Permission denied")
    )
    assert files_under(read_only_folder) == []


@pytest.mark.parametrize("stage", ["data convert", "evaluate", "classify evaluate", "ablation"])
def test_a_full_disk_is_one_line_naming_the_output(
    capsys, full_disk, tiny_data, tiny_config, results_json, stage
):
    argv = stage_writing_to(full_disk, tiny_data, tiny_config, results_json)[stage]
    code, _, err = run_cli(capsys, *argv)
    prog = "ifcn ablation" if stage == "ablation" else f"ifcn {stage}"
    out = Path(argv[-1])
    if stage == "evaluate":  # whichever of ar.json, ar.recall_iou.csv/.png the disk refused
        out = out.with_suffix("")
    assert code == 2
    assert_one_error_line(err, prog, out, ("No space left on device",))
    assert files_under(full_disk) == [Path("filler")]


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path, tiny_config):
    """The same through a real process: exactly one line on stderr, exit status 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "train"
    proc = subprocess.run(
        [sys.executable, "-m", "ifcn", "train", "--config", tiny_config, "--out", out],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"ifcn train: error: {out}")
