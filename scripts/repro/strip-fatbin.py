#!/usr/bin/env python3
"""Blanks the GPU machine code of every architecture but one in a CUDA library's fat binaries.

Why: the onnxruntime-gpu 1.31.1 CUDA provider (`libonnxruntime_providers_cuda.so`, 271 MiB, 177 MiB
compressed) does not fit the GPU test machine's 64 MiB transfers. About 73 MiB of it is sm_90
(Hopper) code; the rest is code for other GPUs. Zeroing the payloads of the other entries (their
headers stay, so the layout and every offset are unchanged) lets the file compress to ~50 MiB.
The driver picks the sm_90 entry on an H100/H200 and never reads the blanked ones.

    scripts/repro/strip-fatbin.py IN.so OUT.so [ARCH=90]

Format (fatbinary container, as used by nvcc): a 16-byte header (magic 0xBA55ED50, version,
header size, size of the entries), then entries: kind (1 PTX, 2 ELF), version, header size,
payload size, ..., the SM architecture at offset 28 of the entry header.
"""
import struct
import sys


def section(data, name):
    """(offset, size) of an ELF64 section by name."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    str_off = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        h = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", data, h)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off:end].decode() == name:
            return struct.unpack_from("<Q", data, h + 0x18)[0], struct.unpack_from("<Q", data, h + 0x20)[0]
    raise SystemExit(f"no section {name}")


def main():
    src, dst = sys.argv[1], sys.argv[2]
    keep = int(sys.argv[3]) if len(sys.argv) > 3 else 90
    data = bytearray(open(src, "rb").read())
    off, size = section(data, ".nv_fatbin")
    p, end, kept, blanked, containers = off, off + size, 0, 0, 0
    while p + 16 <= end:
        magic, _, hsz, fsz = struct.unpack_from("<IHHQ", data, p)
        if magic != 0xBA55ED50:
            p += 8  # containers are 8-byte aligned
            continue
        containers += 1
        q, cend = p + hsz, p + hsz + fsz
        while q < cend:
            _, _, ehs, esz = struct.unpack_from("<HHIQ", data, q)
            arch, = struct.unpack_from("<I", data, q + 28)
            if arch == keep:
                kept += esz
            else:
                data[q + ehs:q + ehs + esz] = bytes(esz)
                blanked += esz
            q += ehs + esz
        p = cend
    open(dst, "wb").write(data)
    print(f"{containers} fat binaries: kept {kept} bytes of sm_{keep}, blanked {blanked} bytes")


if __name__ == "__main__":
    main()
