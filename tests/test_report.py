"""`personseg report`: training curves from log.jsonl, tolerant of missing keys and a half-written line."""
import json

import numpy as np
from PIL import Image

from personseg.cli import main
from personseg.report import plot_lines, read_log, render_curves


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_report_writes_png(tmp_path, capsys):
    """The format `personseg train` writes: flat loss records in log.jsonl, nested per-source metrics
    in metrics.jsonl (a source may appear late, keys may be missing)."""
    log, evals = [], []
    for step in range(1, 41):
        record = {"step": step, "epoch": step // 10, "lr": 1e-3 if step < 30 else 3e-4, "loss": 1 / step,
                  "bce": 0.6 / step, "tversky": 0.4 / step, "boundary_weight": 0.0, "time": step * 1.5}
        if step > 30:
            record["boundary"] = 0.1
        log.append(record)
        if step % 10 == 0:
            metrics = {"portraits": {"iou": 0.8 + step / 1000, "dice": 0.9}, "pooled": {"iou": 0.7}}
            if step >= 20:
                metrics["hsd"] = {"iou": 0.5 + step / 1000}
            evals.append({"step": step, "epoch": step // 10, "lr": 1e-3, "plateaued": False, "metrics": metrics})
    write_log(tmp_path / "log.jsonl", log, tail='{"step": 41, "lo')  # a run still writing
    write_log(tmp_path / "metrics.jsonl", evals)
    assert main(["report", str(tmp_path)]) == 0
    image = np.asarray(Image.open(tmp_path / "curves.png"))
    assert image.ndim == 3 and image.shape[0] > image.shape[1] / 2  # three panels stacked
    assert (image < 250).any()  # something was drawn
    err = capsys.readouterr().err
    assert "skipped 1 line" in err and "40 log and 4 evaluation records" in err

    out = tmp_path / "elsewhere" / "c.png"
    (tmp_path / "metrics.jsonl").unlink()  # before the first evaluation
    assert main(["report", str(tmp_path), "-o", str(out)]) == 0 and out.is_file()


def test_curves_pick_the_right_series():
    from personseg.report import _is_lr, _label

    assert _is_lr("lr") and not _is_lr("loss") and not _is_lr("boundary_weight")
    assert _label("metrics/portraits/iou") == "portraits" and _label("val/hsd/iou") == "hsd"
    assert render_curves([{"step": 1, "lr": 1e-3, "loss": 0.5}], None).shape[2] == 3
    assert render_curves([{"val/ccp/iou": 0.5}, {"val/ccp/iou": 0.6}]).dtype == np.uint8  # no step key


def test_read_log_flattens_and_skips(tmp_path):
    write_log(tmp_path / "log.jsonl", [{"step": 1, "val": {"ccp": {"iou": 0.5}}, "note": "text", "ok": True}],
              tail="not json\n")
    records, bad = read_log(tmp_path / "log.jsonl")
    assert records == [{"step": 1.0, "val/ccp/iou": 0.5}] and bad == 1


def test_report_without_log_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no log.jsonl" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "log.jsonl").write_text("\n")
    assert main(["report", str(tmp_path)]) == 1
    assert "no records" in capsys.readouterr().err


def test_plot_lines_handles_gaps_and_empty():
    img = plot_lines([("a", [0, 1, 2, 3], [1.0, float("nan"), 2.0, 3.0]), ("one", [1], [0.0])],
                     size=(300, 200), log_y=True)
    assert img.shape == (200, 300, 3) and img.dtype == np.uint8
    assert plot_lines([], size=(300, 200)).shape == (200, 300, 3)
