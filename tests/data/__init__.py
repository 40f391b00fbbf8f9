"""Tests of ifcn.data."""

from pathlib import Path

# A few photos of a real Roboflow COCO export, its quirks kept (tests/fixtures/borrat/README.md).
BORRAT = Path(__file__).resolve().parents[1] / "fixtures" / "borrat"
