"""Download the public datasets the configs use: `python -m data.fetch NAME [NAME ...]`, `--list`.

Each file comes from the URL in CATALOGUE (pinned to a commit or revision where the host has them), lands
under the destination root (`data_files/` by default, the paths the configs name) and is checked before it
is kept:
  - the download goes to `<file>.part` and resumes from there with an HTTP Range request when run again;
  - it must be as long as the server (and the catalogue) says, else "cut off" and the .part stays for resume;
  - its sha256 must equal the published one (catalogue column `sha256`; from ../shared/data/SOURCES.md, the
    dataset hub's LFS pointer, or the TFDS / HF `datasets` checksum lists), else it is deleted;
  - GitHub files without a published sha256 are checked against their git blob id at the pinned commit;
  - where no sha256 is published (`sha256` None) the digest of the first download is recorded beside the
    file as `<file>.sha256` and every later run checks the file against it;
  - only then is it fsynced and renamed into place; archives (zip, tar.gz) are unpacked into a temporary
    folder first, renamed into place whole, and removed.
Every failure is one line: offline, HTTP errors such as 404, a wrong checksum, a cut-off transfer.
Only the standard library (urllib) is used. `--base-url URL` (or GIVA_FETCH_BASE_URL) fetches
`URL/<host>/<path>` instead of `https://<host>/<path>`, for a mirror or the tests' local server.

GLUE's MRPC is distributed as Microsoft's train file plus GLUE's list of dev ids; after download the
train file is split into MRPC/train.tsv and MRPC/dev.tsv the way GLUE's download_glue_data.py does.
"""
import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from data.safetensors_io import atomic_file, replace_durably

DEFAULT_ROOT = Path("data_files")
BASE_URL_ENV = "GIVA_FETCH_BASE_URL"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    dataset: str  # the NAME given on the command line
    url: str
    path: str  # relative to the destination root
    sha256: str | None  # None: not published; recorded beside the file after the first download
    size: int | None  # bytes, where published
    unpacks_to: str = ""  # archives: the folder (relative to root) they unpack to; the archive is then removed
    git_blob: str | None = None  # GitHub files without a published sha256: the git blob id of the pinned commit


GH = "https://raw.githubusercontent.com"
HF = "https://huggingface.co/datasets"
GSM8K = f"{GH}/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data"
LLM_ADAPTERS = f"{GH}/AGI-Edgerunners/LLM-Adapters/816657208af4db747803f87ba40a4c71383fed7a"
MT_BENCH = f"{GH}/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data"
GLUE = "https://dl.fbaipublicfiles.com/glue/data"
FLOWERS = f"{HF}/dpdl-benchmark/oxford_flowers102/resolve/544b55c9af69a05742ead7571cd7ae23cfcd758b/data"
METAMATH = f"{HF}/meta-math/MetaMathQA/resolve/aa4f34d3d2d3231299b5b03d9b3e5a20da45aa18"
RESISC = f"{HF}/timm/resisc45/resolve/fe12fc5f1b7606543b0355eda392f1ddc54625c6/data"

CATALOGUE = (
    Source("metamathqa", f"{METAMATH}/MetaMathQA-395K.json",
           "MetaMathQA-395K.json", "fb39a5d8c05c042ece92eae37dfd5ea414a5979df2bf3ad3b86411bef8205725", 395626321),
    Source("gsm8k", f"{GSM8K}/train.jsonl", "gsm8k/train.jsonl",
           "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206),
    Source("gsm8k", f"{GSM8K}/test.jsonl", "gsm8k/test.jsonl",
           "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738),
    Source("commonsense15k", f"{LLM_ADAPTERS}/ft-training_set/commonsense_15k.json",
           "commonsense/commonsense_15k.json", None, None, git_blob="3716afef6d384c475dba13f88a5a96c8032dafe2"),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/boolq/test.json", "commonsense/boolq/test.json",
           "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9", 899151),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/piqa/test.json", "commonsense/piqa/test.json",
           "3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141", 913157),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/social_i_qa/test.json", "commonsense/social_i_qa/test.json",
           "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d", 843748),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/hellaswag/test.json", "commonsense/hellaswag/test.json",
           None, None, git_blob="183c4920415f83ba4b793c4873a33e7e10bd1be5"),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/winogrande/test.json", "commonsense/winogrande/test.json",
           "6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9", 497409),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/ARC-Easy/test.json", "commonsense/ARC-Easy/test.json",
           "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc", 1157216),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/ARC-Challenge/test.json", "commonsense/ARC-Challenge/test.json",
           "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7", 622510),
    Source("commonsense_eval", f"{LLM_ADAPTERS}/dataset/openbookqa/test.json", "commonsense/openbookqa/test.json",
           "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e", 202545),
    Source("code_feedback", f"{HF}/m-a-p/CodeFeedback-Filtered-Instruction/resolve/"
           "e24e63942ad4450639e16ba318130ab841946916/CodeFeedback-Filtered-Instruction.jsonl",
           "CodeFeedback-Filtered-Instruction.jsonl",
           "6dd3f7797cd86a7e437de660ad259c50835812f8e309d893f09de77b2ee80063", 371228314),
    Source("alpaca_cleaned", f"{HF}/yahma/alpaca-cleaned/resolve/main/alpaca_data_cleaned.json",
           "alpaca_data_cleaned.json", None, None),
    Source("humaneval", f"{GH}/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz",
           "humaneval/HumanEval.jsonl.gz", "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44877),
    Source("mt_bench", f"{MT_BENCH}/mt_bench/question.jsonl", "mt_bench/question.jsonl",
           "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", 48929),
    Source("mt_bench", f"{MT_BENCH}/mt_bench/reference_answer/gpt-4.jsonl", "mt_bench/reference_answer/gpt-4.jsonl",
           "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f", 51109),
    Source("mt_bench", f"{MT_BENCH}/judge_prompts.jsonl", "mt_bench/judge_prompts.jsonl",
           "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6", 10449),
    Source("glue", f"{GLUE}/CoLA.zip", "glue/CoLA.zip",
           "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff", 376971, "glue/CoLA"),
    Source("glue", f"{GLUE}/SST-2.zip", "glue/SST-2.zip",
           "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa", 7439277, "glue/SST-2"),
    Source("glue", f"{GLUE}/QNLIv2.zip", "glue/QNLIv2.zip",
           "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5", 10627589, "glue/QNLI"),
    Source("glue", f"{GLUE}/RTE.zip", "glue/RTE.zip",
           "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee", 697150, "glue/RTE"),
    Source("glue", f"{GLUE}/STS-B.zip", "glue/STS-B.zip",
           "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85", 802872, "glue/STS-B"),
    Source("glue", "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
           "glue/MRPC/msr_paraphrase_train.txt",
           "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89", 1047044),
    Source("glue", f"{GLUE}/mrpc_dev_ids.tsv", "glue/MRPC/mrpc_dev_ids.tsv",
           "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7", 6222),
    Source("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "cifar100/cifar-100-binary.tar.gz",
           "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec", 168513733, "cifar100/cifar-100-binary"),
    Source("food101", "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food101/food-101.tar.gz",
           "d97d15e438b7f4498f96086a4f7e2fa42a32f2712e87d3295441b2b6314053a4", 4996278331, "food101/food-101"),
    Source("flowers102", f"{FLOWERS}/train-00000-of-00001.parquet", "flowers102/train-00000-of-00001.parquet",
           None, None),
    Source("flowers102", f"{FLOWERS}/validation-00000-of-00001.parquet",
           "flowers102/validation-00000-of-00001.parquet", None, None),
    *(Source("flowers102", f"{FLOWERS}/test-{i:05d}-of-00006.parquet", f"flowers102/test-{i:05d}-of-00006.parquet",
             None, None) for i in range(6)),
    Source("resisc45", f"{RESISC}/train-00000-of-00001.parquet", "resisc45/train-00000-of-00001.parquet",
           "e770542a7a1e0cef03a6e8d8b8157d13e183f3fc769fb90644fd55997fdb9d81", None),
    Source("resisc45", f"{RESISC}/validation-00000-of-00001.parquet", "resisc45/validation-00000-of-00001.parquet",
           "9b77fdee21dc3d481941f4f2503ae2b328efdf3389a2189c104023e47dada455", None),
    Source("resisc45", f"{RESISC}/test-00000-of-00001.parquet", "resisc45/test-00000-of-00001.parquet", None, None),
)
DATASETS = tuple(dict.fromkeys(s.dataset for s in CATALOGUE))


class FetchError(Exception):
    """A download that cannot finish: the message is the one line shown to the user."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def git_blob_id(path) -> str:
    """The id git gives the file's content: sha1 of b"blob <size>\\0" + content (what GitHub publishes)."""
    h = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def mirrored(url: str, base_url: str | None) -> str:
    """`url` itself, or `<base_url>/<host>/<path>` when a mirror (or a test server) stands in for the hosts."""
    if not base_url:
        return url
    parts = urlsplit(url)
    return f"{base_url.rstrip('/')}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "giva-data-fetch"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and start:  # nothing left past `start`: the .part is already whole
            return None
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except URLError as e:
        raise FetchError(f"cannot reach {urlsplit(url).netloc} ({e.reason}): offline? "
                         f"data.fetch needs network access to {url}") from None
    except (TimeoutError, ConnectionError) as e:
        raise FetchError(f"cannot reach {urlsplit(url).netloc} ({e}): offline? "
                         f"data.fetch needs network access to {url}") from None


def _expected_total(resp, start: int, url: str) -> int | None:
    """The file's full length from the response headers; a partial answer must start where we asked."""
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
        try:
            first, total = content_range.split()[1].split("-")[0], content_range.split("/")[1]
        except IndexError:
            raise FetchError(f"{url}: malformed Content-Range {content_range!r}") from None
        if int(first) != start:
            raise FetchError(f"{url}: asked for bytes from {start}, got a range from {first}")
        return None if total == "*" else int(total)
    length = resp.headers.get("Content-Length")
    return None if length is None else int(length)


def download(url: str, dest: Path, sha256: str | None = None, size: int | None = None,
             git_blob: str | None = None, timeout: float = 60.0) -> str:
    """Fetch `url` into `dest` through `dest.part` (resumed if present), verify it, rename it into place.

    Returns the file's sha256. A cut-off transfer keeps the .part (run again to resume); a digest that is not
    `sha256` (or a git blob id that is not `git_blob`) deletes it."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    total = size
    if size is None or have < size:
        resp = _open(url, have, timeout)
        if resp is not None:
            with resp:
                if resp.status == 200 and have:  # the server ignored the Range header: start over
                    have = 0
                total = _expected_total(resp, have, url)
                if size is not None and total is not None and total != size:
                    raise FetchError(f"{url}: the server has {total} bytes, the catalogue expects {size}")
                total = total if total is not None else size
                print(f"fetching {url} -> {dest}" + (f" ({total / 1e6:.1f} MB)" if total else ""), file=sys.stderr)
                with open(part, "ab" if have else "wb") as f:
                    tenth = max(total // 10, 1) if total else None
                    try:
                        while block := resp.read(CHUNK):
                            f.write(block)
                            if tenth and (f.tell() - len(block)) // tenth != f.tell() // tenth:
                                print(f"  {f.tell() / 1e6:.1f} of {total / 1e6:.1f} MB", file=sys.stderr)
                    except (OSError, HTTPException):  # reset, timeout, IncompleteRead: checked by length below
                        pass
                    f.flush()
                    os.fsync(f.fileno())
    got = part.stat().st_size if part.exists() else 0
    if total is not None and got < total:
        raise FetchError(f"{url}: transfer cut off at {got} of {total} bytes; run the same command again to resume "
                         f"({part} is kept)")
    digest = file_sha256(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise FetchError(f"{url}: wrong checksum, sha256 {digest} instead of {sha256}; the download was deleted")
    if git_blob is not None and (blob := git_blob_id(part)) != git_blob:
        part.unlink()
        raise FetchError(f"{url}: wrong checksum, git blob {blob} instead of {git_blob}; the download was deleted")
    replace_durably(part, dest)
    return digest


def _record(path: Path, digest: str):
    with atomic_file(path.with_name(path.name + ".sha256"), "w") as f:
        f.write(f"{digest}  {path.name}\n")


def _recorded(path: Path) -> str | None:
    sidecar = path.with_name(path.name + ".sha256")
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


def _unpack(archive: Path, root: Path, unpacks_to: str):
    """Extract `archive` into a temporary folder beside it, then rename its `unpacks_to` folder into place."""
    target = root / unpacks_to
    if target.exists():
        raise FetchError(f"{target} exists but was not unpacked by data.fetch; remove it and run again")
    tmp = archive.with_name(f".{archive.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)  # zipfile drops absolute paths and '..' parts
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")  # refuses links and paths that leave tmp
        inside = tmp / Path(unpacks_to).name
        if not inside.is_dir():
            raise FetchError(f"{archive}: the archive holds no folder {Path(unpacks_to).name}/")
        replace_durably(inside, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise FetchError(f"{archive}: cannot unpack ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_source(src: Source, root: Path, base_url: str | None = None) -> str:
    """Bring one catalogue row into `root`; returns what happened ("present" or "fetched")."""
    path = root / src.path
    if src.unpacks_to and _recorded(path) and not path.exists() and (root / src.unpacks_to).is_dir():
        return "present"
    if path.exists():
        expected = src.sha256 or _recorded(path)
        digest = file_sha256(path)
        if expected is not None and digest != expected:
            raise FetchError(f"{path} exists but its sha256 is {digest}, not {expected}; delete it to fetch again")
        if not src.unpacks_to:
            if expected is None:
                _record(path, digest)
            return "present"
    else:
        digest = download(mirrored(src.url, base_url), path, src.sha256, src.size, src.git_blob)
    if src.unpacks_to:
        _unpack(path, root, src.unpacks_to)
    _record(path, digest)  # for an archive: the record that it was fetched and unpacked
    if src.unpacks_to:
        path.unlink()
    return "fetched"


def split_mrpc(folder: Path):
    """MRPC/train.tsv and dev.tsv from Microsoft's train file and GLUE's dev ids (download_glue_data.py's split)."""
    if (folder / "train.tsv").is_file() and (folder / "dev.tsv").is_file():
        return
    source, ids_file = folder / "msr_paraphrase_train.txt", folder / "mrpc_dev_ids.tsv"
    dev_ids = {tuple(line.strip().split("\t")) for line in ids_file.read_text(encoding="utf-8").splitlines()
               if line.strip()}
    lines = source.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    split = {"train": [header], "dev": [header]}
    for i, row in enumerate(rows, start=2):
        fields = row.strip().split("\t")
        if len(fields) != 5:
            raise FetchError(f"{source}:{i}: {len(fields)} tab-separated fields, expected 5")
        split["dev" if (fields[1], fields[2]) in dev_ids else "train"].append("\t".join(fields))
    for name, out in split.items():
        with atomic_file(folder / f"{name}.tsv", "w") as f:
            f.write("\n".join(out) + "\n")


AFTER_FETCH = {"glue": lambda root: split_mrpc(root / "glue" / "MRPC")}


def fetch(name: str, root=DEFAULT_ROOT, base_url: str | None = None):
    """Every file of dataset `name` into `root`, verified; prints one line per file."""
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)} (see --list)")
    root = Path(root)
    for src in CATALOGUE:
        if src.dataset == name:
            state = fetch_source(src, root, base_url)
            print(f"{state:8s} {root / (src.unpacks_to or src.path)}")
    if name in AFTER_FETCH:
        AFTER_FETCH[name](root)


def catalogue_table() -> str:
    lines = []
    for name in DATASETS:
        lines.append(f"{name}:")
        for s in (s for s in CATALOGUE if s.dataset == name):
            digest = s.sha256 or "unknown: the digest is recorded beside the file after the first download"
            blob = f"\n    git blob {s.git_blob}" if s.git_blob else ""
            lines.append(f"  {s.unpacks_to or s.path}\n    from   {s.url}\n    sha256 {digest}{blob}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one or more of: {', '.join(DATASETS)}")
    parser.add_argument("--list", action="store_true", help="print the catalogue (destinations, URLs, sha256)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="destination folder (default: data_files)")
    parser.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                        help=f"fetch <URL>/<host>/<path> instead (a mirror; default: ${BASE_URL_ENV})")
    args = parser.parse_args(argv)
    if args.list:
        print(catalogue_table())
        return 0
    if not args.names:
        parser.error("give at least one NAME, or --list")
    try:
        for name in args.names:
            fetch(name, args.root, args.base_url)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
