"""Download and unpack PASCAL VOC 2007 (trainval + test) and VOC 2012 (trainval).

    python data_scripts/download_voc.py --out data/      # all three archives, ~3.6 GB
    python data_scripts/download_voc.py --out data/ --archives voc2007_test

Afterwards ``data/VOCdevkit/VOC2007`` and ``data/VOCdevkit/VOC2012`` hold the VOC layout
that ``ssd_tutorial.data.voc0712_trainval(data/)`` and ``voc2007_test(data/)`` read.

* Each archive is checked against its MD5 (the same numbers torchvision uses); a
  mismatch deletes the file and fails.
* An interrupted download resumes where it stopped (HTTP Range on ``<archive>.part``).
* Extraction refuses members that would land outside the target folder, links and device
  files (our own check, plus tarfile's ``filter="data"`` where Python has it).
* Running it again does no work: a verified archive is not downloaded again, and a
  marker file written after extraction skips the unpacking.
* An archive that does not read as a tar (truncated, or another file whose MD5 was given
  as expected) is renamed ``<archive>.bad``, so that a rerun downloads it again.
* ``--base-url`` and ``--md5 NAME=HEX`` point it elsewhere (a mirror, or a test server).
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ssd_tutorial.cli import USER_ERRORS, add_debug_flag, run_main
from ssd_tutorial.files import file_digest

CHUNK = 1 << 20  # bytes per read


@dataclass(frozen=True)
class Archive:
    """One VOC tar: its file name, its MD5, and the URLs to try in order."""

    name: str
    filename: str
    md5: str
    urls: tuple[str, ...]


# The official host first, then the long-lived pjreddie.com mirror (same files, same
# MD5s).
ARCHIVES: dict[str, Archive] = {
    "voc2007_trainval": Archive(
        "voc2007_trainval",
        "VOCtrainval_06-Nov-2007.tar",
        "c52e279531787c972589f7e41ab4ae64",
        (
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
            "https://pjreddie.com/media/files/VOCtrainval_06-Nov-2007.tar",
        ),
    ),
    "voc2007_test": Archive(
        "voc2007_test",
        "VOCtest_06-Nov-2007.tar",
        "b6e924de25625d8de591ea690078ad9f",
        (
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
            "https://pjreddie.com/media/files/VOCtest_06-Nov-2007.tar",
        ),
    ),
    "voc2012_trainval": Archive(
        "voc2012_trainval",
        "VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        (
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
        ),
    ),
}


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    return file_digest(path, "md5", CHUNK).hexdigest()


def download(
    url: str, dest: Path, md5: str, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present, and verify
    ``md5``.

    A ``dest`` that already has the right MD5 is kept as is.  Raises ``ValueError`` on a
    checksum mismatch (the bad file is deleted) and ``urllib.error.URLError`` on network
    errors (the partial file is kept for the next try).
    """
    from tqdm import tqdm

    if dest.exists() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(
        url, headers={"Range": f"bytes={have}-"} if have else {}
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        # 416: nothing left to send, the part file is already complete
        if err.code != 416:
            raise
        response = None
    if response is not None:
        with response:
            if have and response.status != 206:  # the server ignored Range: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with (
                open(part, "ab" if have else "wb") as f,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        # http.client ends a body cut short by a dropped connection as if it were
        # complete: compare with Content-Length, so that a partial file is kept for
        # resuming, not failed on its MD5.
        size = part.stat().st_size
        if total is not None and size < total:
            raise urllib.error.URLError(
                f"connection closed after {size} of {total} bytes of {url}; rerun to "
                "resume"
            )
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise ValueError(
            f"{dest.name} from {url}: MD5 {got} does not match the expected {md5}; "
            "deleted it"
        )
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, target: Path, archive: Path) -> None:
    """Refuse links, devices and anything that would be written outside ``target``."""
    if member.issym() or member.islnk():
        raise ValueError(
            f"{archive}: refusing link member {member.name!r} -> {member.linkname!r}"
        )
    if not (member.isfile() or member.isdir()):
        raise ValueError(
            f"{archive}: refusing special member {member.name!r} (device, fifo or "
            "other)"
        )
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise ValueError(
            f"{archive}: refusing member {member.name!r} that escapes the target folder"
        )
    resolved = (target / member.name).resolve()
    if resolved != target and target not in resolved.parents:
        raise ValueError(
            f"{archive}: refusing member {member.name!r} that escapes the target folder"
        )


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar into ``target`` after checking every member (see
    :func:`_check_member`)."""
    target = target.resolve()
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, target, archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports
            tar.extractall(target, members=members, filter="data")
        else:
            tar.extractall(target, members=members)


def fetch(
    archive: Archive, out_dir: Path, keep_archive: bool = True, progress: bool = True
) -> Path:
    """Download (or reuse) and extract one archive into ``out_dir``; idempotent."""
    out_dir = Path(out_dir)
    marker = out_dir / f".{archive.name}.extracted"
    if marker.exists() and marker.read_text().strip() == archive.md5:
        print(f"{archive.name}: already extracted, skipping")
        return out_dir
    dest = out_dir / "downloads" / archive.filename
    errors = []
    for url in archive.urls:
        try:
            download(url, dest, archive.md5, progress=progress)
            break
        except (urllib.error.URLError, OSError, ValueError) as err:
            errors.append(f"{url}: {err}")
            print(f"{archive.name}: {url} failed ({err})", file=sys.stderr)
    else:
        raise RuntimeError(
            f"{archive.name}: every URL failed:\n  " + "\n  ".join(errors)
        )
    print(f"{archive.name}: extracting {dest.name}")
    try:
        safe_extract(dest, out_dir)
    except (
        tarfile.TarError,
        EOFError,
    ) as err:  # EOFError: a compressed stream cut short
        bad = dest.with_name(dest.name + ".bad")
        os.replace(dest, bad)  # kept for a look, out of the way of the next download
        # tarfile lists every method it tried, one per line
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{dest}: not a readable tar archive ({type(err).__name__}: {reason}); "
            f"moved it to {bad.name}, rerun to download it again"
        ) from err
    marker.write_text(archive.md5 + "\n")
    if not keep_archive:
        dest.unlink()
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data"),
        help="folder that will hold VOCdevkit/",
    )
    parser.add_argument(
        "--archives",
        nargs="+",
        default=list(ARCHIVES),
        choices=list(ARCHIVES),
        help="which archives to fetch",
    )
    parser.add_argument(
        "--base-url", help="fetch <base-url>/<archive file name> instead of the mirrors"
    )
    parser.add_argument(
        "--md5",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="override an archive's expected MD5",
    )
    parser.add_argument(
        "--delete-archives",
        action="store_true",
        help="remove the tars after extraction",
    )
    parser.add_argument("--no-progress", action="store_true")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    # Network failures (URLError is an OSError) and "every URL failed" are the user's to
    # fix too.
    return run_main(
        lambda: _main(parser, args), args.debug, USER_ERRORS + (OSError, RuntimeError)
    )


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.md5:
        name, sep, value = item.partition("=")
        if not sep or name not in ARCHIVES or len(value) != 32:
            parser.error(
                f"--md5 expects NAME=32-hex-digits with NAME in {sorted(ARCHIVES)}, "
                f"got {item!r}"
            )
        overrides[name] = value.lower()
    for name in args.archives:
        archive = ARCHIVES[name]
        if args.base_url:
            archive = replace(
                archive, urls=(args.base_url.rstrip("/") + "/" + archive.filename,)
            )
        if name in overrides:
            archive = replace(archive, md5=overrides[name])
        fetch(
            archive,
            args.out,
            keep_archive=not args.delete_archives,
            progress=not args.no_progress,
        )
    print(f"done: {args.out / 'VOCdevkit'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
