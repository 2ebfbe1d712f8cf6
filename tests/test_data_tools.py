"""`personseg data`: downloads from a loopback HTTP server (resume, checksums), conversion, `data check`.
Nothing here touches the internet: every URL is http://127.0.0.1 on a port the OS picks."""
import hashlib
import io
import json
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from PIL import Image

from personseg.cli import main
from personseg.data_tools import DownloadError, check_folder, download

ROOT = "Human-Segmentation-Dataset-master"


class RangeHandler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` / `bytes=N-M` support. server.mode: "normal"; "drop" sends the full
    Content-Length but only half the body, then closes; "no-range" ignores Range headers."""

    def do_GET(self):
        server = self.server
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, end, status = 0, len(body) - 1, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and server.mode != "no-range":
            start, status = int(match.group(1)), 206
            end = min(int(match.group(2) or end), end)
            if start >= len(body):
                server.requests.append((self.headers.get("Range"), 0))  # before replying: the client waits on it
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = body[start:end + 1]
        length = len(payload)
        if server.mode == "drop":
            payload = payload[: len(payload) // 2]
        server.requests.append((self.headers.get("Range"), len(payload)))
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback server in a thread; stopped and joined when the test ends."""
    httpd = HTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.mode, httpd.requests = {}, "normal", []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def hsd_zip() -> bytes:
    """The repository archive's layout: Training_Images/N.jpg, Ground_Truth/N.png (one smaller, one soft)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for i in (1, 2, 3):
            z.writestr(f"{ROOT}/Training_Images/{i}.jpg", jpeg_bytes(rng.integers(0, 255, (60, 80, 3), np.uint8)))
            h, w = (45, 60) if i == 2 else (60, 80)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:, w // 3:2 * w // 3] = 200 if i == 3 else 255
            z.writestr(f"{ROOT}/Ground_Truth/{i}.png", png_bytes(mask))
        z.writestr(f"{ROOT}/Training_Images/.DS_Store", b"\0junk")
        z.writestr(f"{ROOT}/README.md", "# Human Segmentation Dataset\n")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_hsd_verified_and_converted(server, tmp_path, capsys):
    archive = hsd_zip()
    server.files["/hsd.zip"] = archive
    dest = tmp_path / "hsd"
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip",
                 "--sha256", sha256(archive)]) == 0
    assert "sha256 verified" in capsys.readouterr().err
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert sorted(p.name for p in (dest / "masks").iterdir()) == ["1.png", "2.png", "3.png"]
    for mask in (dest / "masks").iterdir():
        assert set(np.unique(np.asarray(Image.open(mask))).tolist()) == {0, 255}
    assert (dest / "downloads" / "Human-Segmentation-Dataset-master.zip").read_bytes() == archive
    assert not list(dest.glob(".extract-*"))

    # The result passes the check; mask 2 (same aspect ratio, smaller) is a warning only.
    assert main(["data", "check", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "0 errors" in out and "size mismatch" in out and "2.png" in out

    # A second download into the same DEST refuses to mix data, and --overwrite reuses the archive.
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    requests = len(server.requests)
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip", "--overwrite",
                 "--allow-unpinned"]) == 0
    assert len(server.requests) == requests  # not fetched again
    assert f"sha256 {sha256(archive)} (not verified" in capsys.readouterr().err


def test_interrupted_download_resumes(server, tmp_path):
    data = bytes(range(256)) * 400  # 102,400 bytes
    server.files["/big.bin"] = data
    target = tmp_path / "big.bin"
    server.mode = "drop"
    with pytest.raises(DownloadError, match="resume"):
        download(server.url + "/big.bin", target, sha256(data), progress=False)
    part = tmp_path / "big.bin.part"
    half = len(data) // 2
    assert part.stat().st_size == half and not target.exists()

    server.mode = "normal"
    assert download(server.url + "/big.bin", target, sha256(data), progress=False) == target
    assert target.read_bytes() == data and not part.exists()
    assert server.requests[-1] == (f"bytes={half}-", len(data) - half)  # only the rest was fetched


def test_server_without_range_support_restarts(server, tmp_path):
    data = b"abcdefgh" * 1000
    server.files["/f.bin"] = data
    server.mode = "no-range"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 100)  # a stale partial download
    download(server.url + "/f.bin", tmp_path / "f.bin", sha256(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_complete_part_file_is_finished(server, tmp_path):
    data = b"0123456789" * 100
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)  # complete, but never renamed
    download(server.url + "/f.bin", tmp_path / "f.bin", sha256(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[-1] == (f"bytes={len(data)}-", 0)


def test_checksum_mismatch_deletes_the_download(server, tmp_path, capsys):
    server.files["/hsd.zip"] = hsd_zip()
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(server.url + "/hsd.zip", tmp_path / "a.zip", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []

    dest = tmp_path / "hsd"
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip", "--sha256", "0" * 64]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (dest / "images").exists() and not list((dest / "downloads").iterdir())

    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/missing.zip", "--allow-unpinned"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_unpinned_downloads_are_refused_and_registry_urls_are_https(server, tmp_path, capsys):
    from personseg.data_tools import DATASETS

    assert all(f.url.startswith("https://") for d in DATASETS.values() for f in d.files)
    server.files["/hsd.zip"] = hsd_zip()
    dest = tmp_path / "hsd"
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip"]) == 1
    err = capsys.readouterr().err
    assert "no pinned sha256" in err and "--sha256" in err and "--allow-unpinned" in err
    assert not server.requests and not dest.exists()  # refused before anything was fetched
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.zip", "--allow-unpinned"]) == 0
    assert "not verified" in capsys.readouterr().err


def test_tar_with_members_leaving_the_folder_is_refused_in_one_line(server, tmp_path, capsys):
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = 4
        t.addfile(member, io.BytesIO(b"evil"))
    server.files["/hsd.tgz"] = buffer.getvalue()
    dest = tmp_path / "d" / "hsd"
    assert main(["data", "download", "hsd", str(dest), "--url", server.url + "/hsd.tgz",
                 "--sha256", sha256(buffer.getvalue())]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("personseg data download:") and "refused" in last and "escaped.txt" in last
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("escaped.txt"))


def test_coco_person_conversion(server, tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    image_zip, annotation_zip = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(image_zip, "w") as z:
        for image_id in (1, 2):
            z.writestr(f"val2017/{image_id:012d}.jpg", jpeg_bytes(np.full((40, 50, 3), 120, np.uint8)))
    crowd = np.zeros((40, 50), np.uint8, order="F")
    crowd[30:40, 0:10] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 40, "width": 50} for i in (1, 2)],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 200, "bbox": [10, 10, 10, 20],
             "segmentation": [[10, 10, 20, 10, 20, 30, 10, 30]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 100, "bbox": [0, 30, 10, 10],
             "segmentation": rle},
            {"id": 3, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 100, "bbox": [0, 0, 10, 10],
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},  # a dog only: image 2 is left out
        ],
    }
    with zipfile.ZipFile(annotation_zip, "w") as z:
        z.writestr("annotations/instances_val2017.json", json.dumps(coco))
    server.files["/val2017.zip"] = image_zip.getvalue()
    server.files["/ann.zip"] = annotation_zip.getvalue()

    dest = tmp_path / "coco"
    assert main(["data", "download", "coco-person", str(dest), "--url", server.url + "/val2017.zip",
                 "--url", server.url + "/ann.zip", "--sha256", sha256(server.files["/val2017.zip"]),
                 "--sha256", sha256(server.files["/ann.zip"])]) == 0
    assert [p.name for p in (dest / "images").iterdir()] == ["000000000001.jpg"]
    mask = np.asarray(Image.open(dest / "masks" / "000000000001.png"))
    assert mask.shape == (40, 50) and mask[20, 15] == 255 and mask[35, 5] == 128 and mask[5, 40] == 0

    assert main(["data", "download", "coco-person", str(dest), "--url", server.url + "/val2017.zip"]) == 1


def planted_folder(tmp_path):
    folder = tmp_path / "planted"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(1)

    def pair(name, mask, size=(48, 64)):
        Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(folder / "images" / f"{name}.jpg")
        if mask is not None:
            Image.fromarray(mask).save(folder / "masks" / f"{name}.png")

    person = np.zeros((48, 64), np.uint8)
    person[10:40, 20:40] = 255
    pair("good", person)
    pair("truncated", person)
    data = (folder / "images" / "truncated.jpg").read_bytes()
    (folder / "images" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    pair("resized", np.zeros((24, 32), np.uint8) + person[::2, ::2])  # same aspect ratio: warning
    pair("mismatched", np.zeros((48, 48), np.uint8) + person[:, :48])  # other aspect ratio: error
    pair("empty", np.zeros((48, 64), np.uint8))
    pair("soft", (person // 2 + 1).astype(np.uint8))  # values 1 and 128: not binary
    pair("nomask", None)
    Image.fromarray(person).save(folder / "masks" / "orphan.png")
    return folder


def test_check_reports_planted_problems(tmp_path, capsys):
    folder = planted_folder(tmp_path)
    report = check_folder(folder)
    found = {(f.level, f.kind, f.path.stem) for f in report.findings}
    assert found == {
        ("error", "unreadable image", "truncated"),
        ("error", "size mismatch", "mismatched"),
        ("warning", "size mismatch", "resized"),
        ("warning", "empty mask", "empty"),
        ("error", "non-binary mask", "soft"),
        ("error", "missing mask", "nomask"),
        ("error", "mask without image", "orphan"),
    }
    assert report.pairs == 5  # good, resized, mismatched, empty, soft

    assert main(["data", "check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "truncated.jpg" in out and "orphan.png" in out
    assert "5 errors" in out and "2 warnings" in out

    for stem in ("truncated", "mismatched", "soft", "nomask"):
        (folder / "images" / f"{stem}.jpg").unlink()
    for stem in ("mismatched", "soft", "orphan", "truncated"):
        (folder / "masks" / f"{stem}.png").unlink()
    assert main(["data", "check", str(folder), "--quiet"]) == 0  # warnings only

    assert main(["data", "check", str(tmp_path / "nothing")]) == 2


def test_check_of_an_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "no images" in capsys.readouterr().out
