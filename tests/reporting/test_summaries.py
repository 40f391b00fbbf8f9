"""The readers of the run's tables: a log without rows is one line, not a pandas traceback."""

from __future__ import annotations

import pytest

from ifcn.errors import IfcnError
from ifcn.reporting.summaries import read_training_log


def test_a_training_log_without_rows_is_one_error_naming_it(tmp_path):
    # what a run that trained no step leaves (once: a forced rerun that resumed at its end)
    log = tmp_path / "train_log.csv"
    log.write_text("iteration,loss,loss_objectness,loss_mask,lr\n")
    with pytest.raises(IfcnError) as raised:
        read_training_log(log)
    assert str(raised.value) == f"{log}: a training log with no rows: the run logged no step"
    log.write_text(log.read_text() + "2,0.7,0.4,0.3,0.01\n")
    assert read_training_log(log)["loss"].tolist() == [0.7]
