import json

import pytest


@pytest.mark.slow
def test_quick_demo_produces_every_artifact(tmp_path, capsys):
    from sparsify.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["unstructured"]["accuracy"]
    assert set(acc) == {"dense", "pruned", "finetuned"}
    assert acc["dense"] > 50.0, "even a quick run learns the digits"
    assert report["unstructured"]["verify_max_abs"] <= 1e-5
    for name in ("dense", "pruned", "finetuned"):
        assert (out / name / "manifest.json").is_file()
    for f in ("dense.onnx", "pruned-dense.onnx", "slim.onnx", "mlp-sparse.onnx", "bench-cnn.json", "bench-mlp.json", "report.txt"):
        assert (out / f).is_file(), f
    bench = json.loads((out / "bench-mlp.json").read_text())
    assert bench["schema"].startswith("sparsify.bench/")
    assert "digits-cnn dense" in capsys.readouterr().out
    assert report["structured"]["params_after"] < report["structured"]["params_before"]
    assert report["structured"]["verify_max_abs"] <= 1e-5
    assert report["sparse"]["verify_max_abs"] <= 1e-5
    assert report["sparse"]["sparse_bytes"] < 0.5 * report["sparse"]["dense_bytes"]
    assert {r["backend"] for r in bench["results"]} == {"ort", "sparsify"}
