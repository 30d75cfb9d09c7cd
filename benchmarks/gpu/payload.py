"""The GPU kit's payload: one xz tarball split into parts that each fit one device call, and its receiver.

Standard library only: the device side (`python3 benchmarks/gpu/payload.py recv`) runs before any
staged package is importable.

    python3 benchmarks/gpu/payload.py slim SRC.so DST.so --keep 90     # drop other GPUs' kernels (in place of them: zeros)
    python3 benchmarks/gpu/payload.py recv --src .gpukit --dest /tmp/gpukit   # device: take this call's part(s)

Why parts: a device call carries at most 64 MiB (working tree included) and the machine keeps its
/tmp only while it stays warm (30 s after a call). stage.py writes part k into .gpukit/pk/ with a
copy of the manifest; call k carries .gpukit/pk; `recv` copies the part into /tmp, and once every
part is there (checked by sha256) it unpacks the tarball and writes READY.

Why slim: onnxruntime-gpu's CUDA provider holds its kernels once per GPU architecture (sm_75, 80, 86,
89, 90, 120 in 1.31: 219 MB of 284). A cubin runs only on its own major architecture, so an H100/H200
(sm_90) never reads the others. `slim` overwrites their payload bytes with zeros, keeping every
header, offset and size, so the library is byte-for-byte the same length and the driver's choice is
unchanged; the zeros then compress to nothing, which is what makes the package fit in two calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

#: fatbin container header: magic, version 1, header size 16, then the size of what follows
FATBIN_MAGIC = 0xBA55ED50
#: entry kinds in a fatbin: 1 = PTX (compiled by the driver for any newer GPU), 2 = cubin (one architecture)
KIND_PTX, KIND_CUBIN = 1, 2
MANIFEST = "manifest.json"


def fatbin_entries(buf: bytes | bytearray) -> list[dict]:
    """Every entry of every fatbin container in `buf`: offset and size of its payload, kind, sm arch.

    Layout (CUDA's fatbinary.h, as nvcc writes it): a 16-byte container header (u32 magic, u16
    version, u16 header size, u64 size of the entries), then entries of u16 kind, u16 version, u32
    header size, u64 payload size, ..., u32 sm arch at byte 28 of the entry header."""
    out = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    i = 0
    while True:
        i = buf.find(magic, i)
        if i < 0:
            return out
        version, hsize, fsize = struct.unpack_from("<HHQ", buf, i + 4)
        if version != 1 or hsize != 16 or i + hsize + fsize > len(buf):
            i += 4
            continue
        j, end = i + hsize, i + hsize + fsize
        while j + 32 <= end:
            kind, _, ehsize, psize = struct.unpack_from("<HHIQ", buf, j)
            if ehsize < 32 or j + ehsize + psize > end:
                break
            arch = struct.unpack_from("<I", buf, j + 28)[0]
            out.append({"container": i, "payload": j + ehsize, "size": psize, "kind": kind, "arch": arch})
            j += ehsize + psize
        i = end


def zero_foreign_cubins(buf: bytearray, keep: set[int]) -> dict:
    """Zero the payload of every cubin whose arch is not in `keep` (PTX entries are kept: they JIT anywhere).

    Refuses (ValueError) when no kept cubin exists: zeroing everything would leave a library that
    loads and then fails at its first kernel."""
    entries = fatbin_entries(buf)
    kept = [e for e in entries if e["kind"] != KIND_CUBIN or e["arch"] in keep]
    if entries and not any(e["kind"] == KIND_CUBIN and e["arch"] in keep for e in entries) \
            and not any(e["kind"] == KIND_PTX for e in entries):
        archs = sorted({e["arch"] for e in entries})
        raise ValueError(f"no cubin for sm {sorted(keep)} in this library (it has {archs}); nothing would run")
    zeroed = 0
    for e in entries:
        if e["kind"] == KIND_CUBIN and e["arch"] not in keep:
            buf[e["payload"]: e["payload"] + e["size"]] = bytes(e["size"])
            zeroed += e["size"]
    archs: dict[int, int] = {}
    for e in entries:
        archs[e["arch"]] = archs.get(e["arch"], 0) + e["size"]
    return {"entries": len(entries), "kept_entries": len(kept), "zeroed_bytes": zeroed,
            "bytes_by_arch": {str(k): v for k, v in sorted(archs.items())}, "keep": sorted(keep)}


def slim_file(src: Path, dst: Path, keep: set[int]) -> dict:
    buf = bytearray(src.read_bytes())
    stats = zero_foreign_cubins(buf, keep)
    dst.write_bytes(bytes(buf))
    return stats


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ parts


def split_parts(blob: Path, out: Path, part_bytes: int, manifest: dict) -> list[Path]:
    """blob -> out/p1/part, out/p2/part, ... each with the manifest (total and per-part sha256)."""
    if part_bytes < 1:
        raise ValueError("part size must be positive")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = blob.stat().st_size
    n = max(1, -(-total // part_bytes))
    dirs = []
    digests = []
    with open(blob, "rb") as f:
        for k in range(1, n + 1):
            d = out / f"p{k}"
            d.mkdir()
            data = f.read(part_bytes)
            (d / "part").write_bytes(data)
            digests.append(hashlib.sha256(data).hexdigest())
            dirs.append(d)
    man = {**manifest, "id": sha256(blob)[:16], "sha256": sha256(blob), "bytes": total, "parts": n,
           "part_sha256": digests}
    for k, d in enumerate(dirs, 1):
        (d / MANIFEST).write_text(json.dumps({**man, "part": k}, indent=1))
    (out / MANIFEST).write_text(json.dumps(man, indent=1))
    return dirs


def recv(src: Path, dest: Path) -> dict:
    """Take the parts carried in `src`/p*/ into `dest`/parts/<id>/; unpack when all are there.

    Returns {"ready": bool, "have": [...], "parts": n, "id": ...}. A part whose sha256 is wrong is an
    error (ValueError): a truncated transfer must not be unpacked."""
    carried = sorted(p for p in src.glob("p*/" + MANIFEST))
    if not carried and (dest / "READY").exists():
        return {**json.loads((dest / "READY").read_text()), "ready": True, "have": "all (received earlier)"}
    if not carried:
        raise ValueError(f"no part in {src}/p*/ (carry one: run(..., carry=['.gpukit/p1']))")
    man = json.loads(carried[0].read_text())
    pid = man["id"]
    ready_file = dest / "READY"
    if ready_file.exists() and json.loads(ready_file.read_text()).get("id") == pid:
        return {"ready": True, "id": pid, "parts": man["parts"], "have": "all (received earlier)"}
    pdir = dest / "parts" / pid
    pdir.mkdir(parents=True, exist_ok=True)
    for mp in carried:
        m = json.loads(mp.read_text())
        if m["id"] != pid:
            raise ValueError(f"{mp} belongs to another staging ({m['id']} vs {pid}); stage again")
        part = mp.parent / "part"
        digest = sha256(part)
        if digest != m["part_sha256"][m["part"] - 1]:
            raise ValueError(f"{part}: sha256 mismatch (transfer broken?)")
        shutil.copyfile(part, pdir / f"{m['part']:03d}")
    have = sorted(int(p.name) for p in pdir.iterdir() if p.name.isdigit())
    status = {"ready": False, "id": pid, "parts": man["parts"], "have": have}
    if len(have) < man["parts"]:
        return status
    blob = dest / "payload.tar.xz"
    with open(blob, "wb") as out:
        for k in range(1, man["parts"] + 1):
            with open(pdir / f"{k:03d}", "rb") as f:
                shutil.copyfileobj(f, out)
    if sha256(blob) != man["sha256"]:
        raise ValueError("the assembled payload's sha256 does not match the manifest")
    for sub in ("site", "cache"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    with tarfile.open(blob, "r:xz") as t:
        t.extractall(dest, filter="data")
    blob.unlink()
    shutil.rmtree(pdir)
    ready_file.write_text(json.dumps({"id": pid, "parts": man["parts"], "contents": man.get("contents", {})}))
    return {**status, "ready": True, "have": have}


def make_tarball(tree: Path, blob: Path, preset: int = 9) -> int:
    """tree/* -> blob as .tar.xz; through the xz program on every core when there is one (python's lzma is single-threaded)."""
    xz = shutil.which("xz")
    if xz:
        with open(blob, "wb") as out:
            proc = subprocess.Popen([xz, f"-{preset}", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
            assert proc.stdin is not None
            with tarfile.open(fileobj=proc.stdin, mode="w|") as t:
                for p in sorted(tree.iterdir()):
                    t.add(p, arcname=p.name)
            proc.stdin.close()
            if proc.wait() != 0:
                raise OSError(f"xz exited with {proc.returncode}")
    else:
        with lzma.open(blob, "wb", preset=preset) as f, tarfile.open(fileobj=f, mode="w") as t:
            for p in sorted(tree.iterdir()):
                t.add(p, arcname=p.name)
    return blob.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slim", help="zero the cubins of other GPU architectures in a shared library")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--keep", default="90", help="comma-separated sm archs to keep (default 90: H100/H200)")
    r = sub.add_parser("recv", help="device side: take the carried part(s), unpack when complete")
    r.add_argument("--src", default=".gpukit")
    r.add_argument("--dest", default="/tmp/gpukit")
    a = ap.parse_args(argv)
    if a.cmd == "slim":
        print(json.dumps(slim_file(Path(a.src), Path(a.dst), {int(x) for x in a.keep.split(",")}), indent=1))
        return 0
    try:
        st = recv(Path(a.src), Path(a.dest))
    except (ValueError, OSError, tarfile.TarError, lzma.LZMAError) as e:
        print(f"gpukit recv: {e}", file=sys.stderr)
        return 2
    if st["ready"]:
        print(f"gpukit: payload {st['id']} ready in {a.dest} ({st['parts']} part(s))")
    else:
        nxt = [k for k in range(1, st["parts"] + 1) if k not in st["have"]]
        print(f"gpukit: have part(s) {st['have']} of {st['parts']}; next call: carry .gpukit/p{nxt[0]} "
              "within 30 s (the machine keeps /tmp only while warm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
