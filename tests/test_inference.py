"""Prediction on a loaded model (xception_core.inference): logits, probabilities, the top-k that
the API and the command line both answer with, and the device a model lives on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xception_core.inference import Prediction, classify, predict_logits, top_k
from xception_core.model import Xception, model_device

NAMES = [f"class {i}" for i in range(1000)]


def test_top_k_is_the_float64_softmax_most_probable_first():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 1.0, -2.0]])
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = top_k(logits, 3, NAMES)
    assert [[q.index for q in row] for row in rows] == [[3, 0, 2], [2, 0, 1]]
    assert rows[0][0] == Prediction(3, "class 3", float(p[0, 3]))
    for row, expected in zip(rows, p):
        assert [q.probability for q in row] == [float(expected[q.index]) for q in row]  # exact: same float64 path
        assert [q.label for q in row] == [NAMES[q.index] for q in row]


def test_top_k_keeps_tiny_probabilities_that_float32_would_lose():
    (_, second), = top_k(np.array([[0.0, -120.0]], dtype=np.float32), 2, NAMES)
    assert second.index == 1 and second.probability == pytest.approx(math.exp(-120), rel=1e-9)


def test_top_k_breaks_ties_by_class_order():
    logits = np.zeros((2, 1000))
    logits[1, 500:] = 1.0
    flat, half = top_k(logits, 1000, NAMES)
    assert [q.index for q in flat] == list(range(1000))
    assert [q.index for q in half] == list(range(500, 1000)) + list(range(500))


def test_top_k_clamps_k_and_wants_rows():
    assert [len(row) for row in top_k(torch.zeros(2, 5), 99, NAMES)] == [5, 5]
    assert [len(row) for row in top_k(torch.zeros(1, 5), 0, NAMES)] == [1]
    with pytest.raises(ValueError, match=r"\[N, classes\]"):
        top_k(torch.zeros(5), 3, NAMES)


def test_predict_logits_and_classify_are_the_model_forward(small_config):
    torch.manual_seed(0)
    model = Xception(small_config).eval()
    batch = torch.randn(2, 3, 71, 71)
    with torch.no_grad():
        expected = model(batch)
    logits = predict_logits(model, batch)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(classify(model, batch), torch.softmax(expected, dim=1), rtol=1e-4, atol=1e-6)


def test_model_device_is_where_the_parameters_are():
    assert model_device(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters at all
