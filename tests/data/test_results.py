"""The COCO results JSON door (`read_results`): a large file parsed in parts gives the same
columns as parsed whole, and a bad result is named wherever it falls."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ifcn.data import results as results_json
from ifcn.data.rle import encode_mask
from ifcn.errors import IfcnError

H, W = 20, 30


def _results(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        mask = rng.random((H, W)) < 0.3
        rle = encode_mask(mask)
        out.append({"image_id": 1 + k % 3, "category_id": 1, "segmentation": rle, "score": k / n})
    return out


@pytest.mark.parametrize(
    "layout",
    ["spaced", "lines", "compact", "nested"],
)
def test_results_parsed_in_parts_equal_the_whole(tmp_path, monkeypatch, layout):

    results = _results(40)
    if layout == "nested":  # a seam inside a result: the part is not JSON, the file is read whole
        for r in results:
            r["extra"] = [{"a": 1}, {"b": 2}]
    text = {
        "spaced": json.dumps(results),
        "lines": "[\n" + ",\n".join(map(json.dumps, results)) + "\n]\n",
        "compact": json.dumps(results, separators=(",", ":")),
        "nested": json.dumps(results),
    }[layout]
    path = tmp_path / "results.json"
    path.write_text(text)
    sizes = {i: (H, W) for i in (1, 2, 3)}
    whole = results_json.read_results(path, sizes, [1], workers=1)
    monkeypatch.setattr(results_json, "PARALLEL_PARSE_BYTES", 0)
    for workers in (2, 3, 7):
        parts = results_json.read_results(path, sizes, [1], workers=workers)
        for key in ("image_id", "score", "category_rank"):
            np.testing.assert_array_equal(getattr(parts, key), getattr(whole, key))
        rows = np.arange(len(results))
        assert parts.counts(rows) == whole.counts(rows) and parts.raw[:] == path.read_bytes()
    want = [results[k]["segmentation"]["counts"].encode() for k in (0, 5)]
    assert whole.counts(np.array([0, 5])) == want


def test_a_bad_result_is_named_when_the_file_is_parsed_in_parts(tmp_path, monkeypatch):
    results = _results(40)
    results[33]["image_id"] = 1.7
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    monkeypatch.setattr(results_json, "PARALLEL_PARSE_BYTES", 0)
    with pytest.raises(IfcnError, match="result 33: image_id 1.7 is not an integer"):
        results_json.read_results(path, {i: (H, W) for i in (1, 2, 3)}, [1], workers=2)
