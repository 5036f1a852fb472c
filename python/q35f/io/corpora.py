"""Real English text for perplexity, fetched once and cached under ~/.cache/q35f/corpora.

- "pydoc": the Python documentation topics shipped with CPython (`pydoc_data.topics`), no download.
- "generated": text the embedded model wrote itself, shipped in the package (the default
  calibration text, never an evaluation text; written by q35f.quantization.generated_corpus).
- Jane Austen's six novels ("prideprejudice", "emma", "sensesensibility", "persuasion",
  "mansfieldpark", "northangerabbey"), from Debian's `r-cran-janeaustenr` package: fetched with
  `apt-get download`, unpacked with `dpkg-deb -x`, read from the R lazy-load database
  `data/Rdata.rdb`/`.rdx` with the `rdata` package. The .rdx is a gzip-compressed serialized R
  list mapping each object to (offset, length) in the .rdb; each object there is a 4-byte
  big-endian length followed by a zlib-compressed serialized R character vector (one novel,
  one element per line of text).

Set Q35F_CACHE to move the cache.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tempfile
import warnings
import zlib
from importlib import resources
from pathlib import Path

AUSTEN = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
ALIASES = {"sense": "sensesensibility", "pride": "prideprejudice", "mansfield": "mansfieldpark",
           "northanger": "northangerabbey"}
NAMES = ("pydoc", "generated") + AUSTEN
# The shipped generated corpus: samples separated by blank lines, gzip-compressed package data.
GENERATED_FILE = "generated-corpus.txt.gz"
GENERATED_SEPARATOR = "\n\n"
DEBIAN_PACKAGE = "r-cran-janeaustenr"
_RDATA_DIR = "usr/lib/R/site-library/janeaustenr/data"


def cache_dir() -> Path:
    root = os.environ.get("Q35F_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "q35f"


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(NAMES)}")
    return key


def text(name: str) -> str:
    """The whole text of corpus `name` (see NAMES), from the cache or fetched once."""
    key = canonical_name(name)
    if key == "pydoc":
        return pydoc_text()
    if key == "generated":
        blob = resources.files("q35f").joinpath("data", GENERATED_FILE).read_bytes()
        return gzip.decompress(blob).decode("utf-8")
    path = cache_dir() / "corpora" / f"{key}.txt"
    if not path.exists():
        for novel, body in fetch_austen().items():
            _write_atomic(cache_dir() / "corpora" / f"{novel}.txt", body)
    return path.read_text(encoding="utf-8")


def pydoc_text() -> str:
    """CPython's documentation topics (the text behind `help('topic')`), in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def fetch_austen() -> dict[str, str]:
    """Download r-cran-janeaustenr with apt and return {novel: text}."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FileNotFoundError(
            f"the Austen corpora come from the Debian package {DEBIAN_PACKAGE}, which needs "
            "apt-get and dpkg-deb; use --corpus pydoc or --text FILE instead"
        )
    with tempfile.TemporaryDirectory(prefix="q35f-corpus-") as tmp:
        run = subprocess.run(
            ["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True,
        )
        debs = sorted(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if run.returncode != 0 or not debs:
            detail = (run.stderr or run.stdout).strip().splitlines()
            raise FileNotFoundError(
                f"`apt-get download {DEBIAN_PACKAGE}` failed"
                + (f": {detail[-1]}" if detail else "")
                + " (try `apt-get update` first; or use --corpus pydoc / --text FILE)"
            )
        root = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
        data = root / _RDATA_DIR
        return read_rdata_db(data / "Rdata.rdx", data / "Rdata.rdb", AUSTEN)


def read_rdata_db(rdx_path: Path, rdb_path: Path, names) -> dict[str, str]:
    """Character vectors `names` from an R lazy-load database, each joined with newlines."""
    import rdata

    with warnings.catch_warnings():  # rdata warns that a bare serialization "is assumed RDS"
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(
            rdata.parser.parse_data(_decompress(Path(rdx_path).read_bytes(), rdx_path))
        )
        offsets = index["variables"]
        db = Path(rdb_path).read_bytes()
        out = {}
        for name in names:
            if name not in offsets:
                raise ValueError(f"{rdb_path} has no object {name!r}")
            start, length = (int(v) for v in offsets[name])
            blob = db[start:start + length]
            if len(blob) != length or length < 4:
                raise ValueError(f"{rdb_path} is truncated at object {name!r}")
            (size,) = struct.unpack(">I", blob[:4])
            raw = zlib.decompress(blob[4:])
            if len(raw) != size:
                raise ValueError(f"{rdb_path}: object {name!r} has {len(raw)} bytes, expected {size}")
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
            out[name] = "\n".join("" if line is None else str(line) for line in lines)
    return out


def _decompress(blob: bytes, path) -> bytes:
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    try:
        return zlib.decompress(blob[4:] if blob[4:6] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda")
                               else blob)
    except zlib.error as err:
        raise ValueError(f"{path} is neither gzip nor zlib compressed ({err})") from None


def _write_atomic(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
