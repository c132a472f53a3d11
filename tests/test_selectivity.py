"""Pattern vs colour-scheme selectivity: the agreement measure, its chance level, the null."""

from __future__ import annotations

import numpy as np
import pytest

from xception_core.atlas import AtlasError
from xception_core.selectivity import _agreement, _chance, selectivity, synthetic_labels, write_report
from xception_core.synthetic import folder_name


class FakeIndex:
    """Two layers' worth of top-k sets: one part picks a pattern, the other a scheme."""

    k = 4

    def __init__(self, labels):
        self.labels = labels
        n = len(labels)
        pattern, scheme = labels % 5, labels // 5
        by_pattern = [np.flatnonzero(pattern == p)[:4] for p in range(5)]
        by_scheme = [np.flatnonzero(scheme == s)[:4] for s in range(4)]
        by_pattern_and_scheme = [np.flatnonzero(labels == c)[:4] for c in range(20)]
        rng = np.random.default_rng(0)
        self.sets = {
            ("a", "depthwise"): np.array(by_pattern),
            ("a", "pointwise"): np.array(by_scheme),
            ("b", "depthwise"): np.array([rng.choice(n, 4, replace=False) for _ in range(40)]),
            ("b", "pointwise"): np.array(by_pattern_and_scheme),
        }

    def layers(self):
        return {"a": {"depthwise": 5, "pointwise": 4}, "b": {"depthwise": 40, "pointwise": 20}}

    def top(self, layer, part):
        images = self.sets[(layer, part)]
        objective = np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (len(images), 1))
        if (layer, part) == ("b", "pointwise"):
            objective[0] = 0.0  # a dead channel: no ranking
        return objective, images


def test_agreement_and_chance():
    assert _agreement(np.array([[1, 1, 1, 1], [0, 1, 2, 3], [0, 0, 1, 1]])).tolist() == [1.0, 0.0, pytest.approx(1 / 3)]
    labels = np.arange(400) % 20
    assert _chance(labels % 5) == pytest.approx((80 * 79 * 5) / (400 * 399))
    assert _chance(labels // 5) == pytest.approx((100 * 99 * 4) / (400 * 399))


def test_selectivity_finds_what_was_planted():
    labels = np.arange(400) % 20
    rows = {(r.layer, r.part): r for r in selectivity(FakeIndex(labels), labels, permutations=50)}
    a_dw, a_pw, b_dw, b_pw = rows[("a", "depthwise")], rows[("a", "pointwise")], rows[("b", "depthwise")], rows[("b", "pointwise")]
    assert a_dw.pattern == 1.0 and a_dw.pattern > a_dw.pattern_null95 and a_dw.pattern_over_scheme == 1.0
    assert a_dw.kappa("pattern") == 1.0 and a_pw.kappa("scheme") == 1.0 and abs(b_dw.kappa("scheme")) < 0.2
    assert a_pw.scheme == 1.0 and a_pw.scheme > a_pw.scheme_null95 and a_pw.pattern_over_scheme == 0.0
    assert b_dw.pattern < b_dw.pattern_null95 + 0.05 and b_dw.scheme < b_dw.scheme_null95 + 0.05  # random sets: near chance
    assert b_dw.pattern_low <= b_dw.pattern <= b_dw.pattern_high
    assert b_pw.dead == 1 and b_pw.channels == 19 and b_pw.pattern == 1.0 and b_pw.scheme == 1.0


def test_labels_come_from_the_class_folders():
    files = [f"{folder_name(7)}/000007.png", f"{folder_name(19)}/000019.png"]
    assert synthetic_labels(files).tolist() == [7, 19]
    with pytest.raises(AtlasError, match="generated data set"):
        synthetic_labels(["cats/1.png"])


def test_bounds():
    labels = np.arange(400) % 20
    with pytest.raises(AtlasError, match="k must be in 2..4"):
        selectivity(FakeIndex(labels), labels, k=1)
    with pytest.raises(AtlasError, match="permutations"):
        selectivity(FakeIndex(labels), labels, permutations=-1)


def test_report_files(tmp_path):
    labels = np.arange(400) % 20
    rows = selectivity(FakeIndex(labels), labels, permutations=5)
    paths = write_report(rows, tmp_path, {"model": "fake", "k": 4, "images": 400})
    assert paths["csv"].read_text().splitlines()[0].startswith("layer,part,channels,dead,pattern")
    assert paths["png"].stat().st_size > 1000
