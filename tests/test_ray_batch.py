"""`personseg batch` on a local Ray (2 CPUs, 2 actors): the same files as `personseg segment`, byte for
byte; a rerun skips what is done, and outputs are written atomically."""
import hashlib
import shutil

import pytest

pytest.importorskip("ray.data", reason='the Ray batch job needs Ray Data: pip install "personseg[ray]"')

from personseg.batch_ray import run_batch  # noqa: E402
from personseg.cli import main  # noqa: E402


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(data_dir, tmp_path):
    """5 real photos in two folders, two of them with the same name (so outputs mirror the folders)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    portraits, hsd = data_dir / "portraits" / "images", data_dir / "hsd" / "images"
    for name in ("00001.jpg", "00003.jpg", "00004.jpg"):
        shutil.copy(portraits / name, folder / name)
    shutil.copy(portraits / "00001.jpg", folder / "sub" / "00001.jpg")
    shutil.copy(hsd / "1.jpg", folder / "sub" / "1.jpg")
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_ray_batch_matches_segment_byte_for_byte_and_resumes(photos, tmp_path, capsys):
    import ray

    options = ["--model", "fast", "--save", "mask,alpha,cutout,background", "--background", "#00b140"]
    assert main(["segment", str(photos), "-o", str(tmp_path / "segment"), "--recursive", "--device", "cpu",
                 *options]) == 1  # broken.jpg
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        kwargs = dict(kinds=["mask", "alpha", "cutout", "background"], model="fast", background="#00b140",
                      workers=2, batch_size=2, recursive=True)
        done, skipped, failures = run_batch([str(photos)], tmp_path / "ray", **kwargs)
        assert (done, skipped) == (5, 0)
        assert [(p.split("/")[-1], "not a readable image" in r) for p, r in failures] == [("broken.jpg", True)]
        expected = digests(tmp_path / "segment")
        assert len(expected) == 5 * 4 and digests(tmp_path / "ray") == expected
        assert not list((tmp_path / "ray").rglob("*.tmp"))  # atomic writes leave no temporary files

        (tmp_path / "ray" / "00003_cutout.png").unlink()  # as if a run had stopped part-way
        done, skipped, _ = run_batch([str(photos)], tmp_path / "ray", **kwargs)
        assert (done, skipped) == (1, 4)
        assert digests(tmp_path / "ray") == expected
    finally:
        ray.shutdown()


def test_the_actors_model_takes_the_commands_region_and_presence_options():
    from personseg.batch_ray import Segmenter

    actor = Segmenter("accurate", True, None, "all", None, "", 2, False, presence=0.0, min_peak=0.9)
    assert actor.predictor.presence_threshold == 0 and actor.predictor.regions.level == 0.9
    default = Segmenter("accurate", True, None, "all", None, "", 2, False)
    assert default.predictor.presence_threshold == 0.02 and default.predictor.regions.level == 0  # the file's own
