"""data.fetch against a local HTTP server on 127.0.0.1: success, checksums, cut-off transfers and resume,
404, offline, archives, the MRPC split, and the catalogue's digests against the real files of ../shared/data."""
import ast
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from data import fetch as F
from data.glue import read_glue


class Site:
    """What the test server serves: {url path: bytes or a file}, plus faults to inject."""

    def __init__(self):
        self.files, self.cut_after, self.requests = {}, {}, []
        self.ignore_range = False


def _handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            site.requests.append((self.path, self.headers.get("Range")))
            content = site.files.get(self.path)
            if content is None:
                self.send_error(404, "Not Found")
                return
            data = content.read_bytes() if isinstance(content, Path) else content
            start = 0
            if self.headers.get("Range") and not site.ignore_range:
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = site.cut_after.pop(self.path, None)  # a fault happens once
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()

    return Handler


@pytest.fixture
def site():
    s = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    s.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield s
    server.shutdown()
    server.server_close()
    thread.join()


def blob(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + bytes(n % 32)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_success_with_checksum(site, tmp_path):
    data = blob(3 * F.CHUNK + 123)
    site.files["/f.bin"] = data
    dest = tmp_path / "out" / "f.bin"
    assert F.download(f"{site.base}/f.bin", dest, sha(data), len(data)) == sha(data)
    assert dest.read_bytes() == data
    assert not dest.with_name("f.bin.part").exists()


def test_wrong_checksum_is_not_kept(site, tmp_path):
    site.files["/f.bin"] = blob(5000)
    dest = tmp_path / "f.bin"
    with pytest.raises(F.FetchError, match=r"f\.bin: wrong checksum, sha256 [0-9a-f]{64} instead of 0{64}; "
                                           r"the download was deleted"):
        F.download(f"{site.base}/f.bin", dest, "0" * 64, 5000)
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


@pytest.mark.parametrize("size_known", [True, False])
def test_cut_off_transfer_then_resume(site, tmp_path, size_known):
    data = blob(100_000)
    site.files["/f.bin"] = data
    site.cut_after["/f.bin"] = 40_000
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    size = len(data) if size_known else None  # unknown: the server's Content-Length tells the cut
    with pytest.raises(F.FetchError, match=r"f\.bin: transfer cut off at 40000 of 100000 bytes; "
                                           r"run the same command again to resume"):
        F.download(f"{site.base}/f.bin", dest, sha(data), size)
    assert not dest.exists() and part.stat().st_size == 40_000
    F.download(f"{site.base}/f.bin", dest, sha(data), size)
    assert site.requests[-1] == ("/f.bin", "bytes=40000-")
    assert dest.read_bytes() == data and not part.exists()


def test_wrong_git_blob_is_not_kept(site, tmp_path):
    site.files["/f.json"] = b'{"a": 1}\n'
    with pytest.raises(F.FetchError, match=r"wrong checksum, git blob [0-9a-f]{40} instead of 1{40}"):
        F.download(f"{site.base}/f.json", tmp_path / "f.json", git_blob="1" * 40)
    assert not list(tmp_path.iterdir())


def test_git_blob_id_is_gits(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    file = tmp_path / "x.txt"
    file.write_bytes(blob(3 * F.CHUNK + 5))
    expected = subprocess.run([git, "hash-object", str(file)], capture_output=True, text=True, check=True).stdout
    assert F.git_blob_id(file) == expected.strip()


def test_server_ignoring_range_restarts_from_zero(site, tmp_path):
    data = blob(10_000)
    site.files["/f.bin"] = data
    site.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 300)
    F.download(f"{site.base}/f.bin", tmp_path / "f.bin", sha(data), None)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_whole_part_file_is_verified_without_refetching(site, tmp_path):
    data = blob(2000)
    site.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    F.download(f"{site.base}/f.bin", tmp_path / "f.bin", sha(data), None)  # the server answers 416
    assert (tmp_path / "f.bin").read_bytes() == data


def test_404(site, tmp_path):
    with pytest.raises(F.FetchError, match=r"/missing\.json: HTTP 404 Not Found"):
        F.download(f"{site.base}/missing.json", tmp_path / "m.json")
    assert not list(tmp_path.iterdir())


def test_offline_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(F.FetchError, match=rf"cannot reach 127\.0\.0\.1:{port} .*offline\?"):
        F.download(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin")
    assert F.main(["humaneval", "--root", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach 127.0.0.1")


def test_unknown_digest_is_recorded_and_then_enforced(site, tmp_path):
    data = blob(4096)
    site.files["/example.org/d/x.json"] = data
    src = F.Source("x", "https://example.org/d/x.json", "x/x.json", None, None)
    assert F.fetch_source(src, tmp_path, site.base) == "fetched"
    assert (tmp_path / "x/x.json.sha256").read_text() == f"{sha(data)}  x.json\n"
    assert F.fetch_source(src, tmp_path, site.base) == "present"
    (tmp_path / "x/x.json").write_bytes(data[:-1] + b"?")
    with pytest.raises(F.FetchError, match=r"x\.json exists but its sha256 is [0-9a-f]{64}, not " + sha(data)):
        F.fetch_source(src, tmp_path, site.base)


def _tar_gz(files: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(files: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_is_verified_unpacked_and_removed(site, tmp_path, kind):
    members = {"set/train.bin": blob(700), "set/meta/names.txt": b"a\nb\n"}
    archive = _tar_gz(members) if kind == "tar.gz" else _zip(members)
    site.files[f"/host/set.{kind}"] = archive
    src = F.Source("s", f"https://host/set.{kind}", f"images/set.{kind}", sha(archive), len(archive), "images/set")
    assert F.fetch_source(src, tmp_path, site.base) == "fetched"
    assert (tmp_path / "images/set/train.bin").read_bytes() == members["set/train.bin"]
    assert (tmp_path / "images/set/meta/names.txt").read_bytes() == b"a\nb\n"
    assert not (tmp_path / f"images/set.{kind}").exists()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["set", f"set.{kind}.sha256"]
    n = len(site.requests)
    assert F.fetch_source(src, tmp_path, site.base) == "present" and len(site.requests) == n


def test_corrupt_archive_is_one_error(site, tmp_path):
    site.files["/host/bad.tar.gz"] = b"not a tarball at all"
    src = F.Source("s", "https://host/bad.tar.gz", "bad.tar.gz", None, None, "bad")
    with pytest.raises(F.FetchError, match=r"bad\.tar\.gz: cannot unpack"):
        F.fetch_source(src, tmp_path, site.base)
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tar.gz.unpacking").exists()


def test_mrpc_split_follows_glue(tmp_path):
    folder = tmp_path / "glue" / "MRPC"
    folder.mkdir(parents=True)
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = ["1\t11\t12\tA \" quote\tB", "0\t21\t22\tC\tD", "1\t31\t32\tE\tF"]
    (folder / "msr_paraphrase_train.txt").write_text("\r\n".join([header, *rows]) + "\r\n", encoding="utf-8")
    (folder / "mrpc_dev_ids.tsv").write_text("21\t22\r\n", encoding="utf-8")
    F.split_mrpc(folder)
    assert (folder / "dev.tsv").read_text(encoding="utf-8") == f"{header}\n0\t21\t22\tC\tD\n"
    assert (folder / "train.tsv").read_text(encoding="utf-8").splitlines() == [header, rows[0], rows[2]]
    dev = read_glue("mrpc", folder / "dev.tsv")
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [("C", "D", 0)]


def test_catalogue_digests_match_the_real_files(site, tmp_path, shared_data):
    """Every catalogue row whose file ../shared/data holds (same relative path) is fetched through the
    mirror and must pass the catalogue's own sha256 and size: the table's digests are the real ones."""
    rows = [s for s in F.CATALOGUE if (shared_data / s.path).is_file()]
    assert {s.dataset for s in rows} >= {"gsm8k", "humaneval", "mt_bench", "commonsense_eval"}
    for s in rows:
        site.files[urlsplit(F.mirrored(s.url, site.base)).path] = shared_data / s.path
    for s in rows:
        assert F.fetch_source(s, tmp_path, site.base) == "fetched", s.path
        assert (tmp_path / s.path).read_bytes() == (shared_data / s.path).read_bytes()
    assert F.main(["gsm8k", "mt_bench", "--root", str(tmp_path), "--base-url", site.base]) == 0
    # the git blob ids of the LLM-Adapters rows come from `git ls-tree` of the same pinned commit
    assert F.git_blob_id(shared_data / "commonsense/boolq/test.json") == "6d7edb0a8e8a6566b546ccf0d98d24e48db3fdf3"


def test_list_prints_the_catalogue(capsys):
    assert F.main(["--list"]) == 0
    out = capsys.readouterr().out
    for s in F.CATALOGUE:
        assert s.url in out and (s.unpacks_to or s.path) in out
    assert out.count("unknown: the digest is recorded beside the file") == sum(s.sha256 is None for s in F.CATALOGUE)


def test_catalogue_is_well_formed():
    paths = [s.path for s in F.CATALOGUE]
    assert len(paths) == len(set(paths))
    assert "metamathqa" in F.DATASETS and "MetaMathQA-395K.json" in paths  # configs/olmo2_metamath.yaml
    for s in F.CATALOGUE:
        assert s.sha256 is None or (len(s.sha256) == 64 and set(s.sha256) <= set("0123456789abcdef")), s.path
        assert s.git_blob is None or (len(s.git_blob) == 40 and set(s.git_blob) <= set("0123456789abcdef")), s.path
        assert s.url.startswith(("https://", "http://")) and not os.path.isabs(s.path)
        assert bool(s.unpacks_to) == s.path.endswith((".zip", ".tar.gz")), s.path
    for task in ("CoLA", "SST-2", "QNLI", "RTE", "STS-B"):  # data/glue.py reads <root>/glue/<Task>/
        assert f"glue/{task}" in {s.unpacks_to for s in F.CATALOGUE}


def test_fetch_uses_the_standard_library_only():
    tree = ast.parse(Path(F.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names - set(sys.stdlib_module_names) == {"data"}
