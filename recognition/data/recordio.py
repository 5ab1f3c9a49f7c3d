"""insightface / MXNet RecordIO (.rec + .idx) without MXNet: reader, writer and a Dataset.

Format (dmlc-core recordio, as used by MXNet's `MXIndexedRecordIO` and insightface's MS1MV2 et al.):

- A record on disk: uint32 magic 0xced7230a, uint32 lrecord, then `length` payload bytes, zero-padded to a
  multiple of 4. lrecord = cflag << 29 | length. cflag 0: a whole record. A payload containing the magic
  word at a 4-byte-aligned offset is split there into parts with cflag 1 (first), 2 (middle), 3 (last);
  the magic word itself is dropped and re-inserted between the parts when reading.
- The .idx is text, one "key<TAB>byte offset of the record" line per record.
- A payload (MXNet `recordio.pack`): IRHeader struct '<IfQQ' = (flag uint32, label float32, id uint64,
  id2 uint64), 24 bytes; when flag > 0 the label is an array of `flag` float32 values following the header
  (and the header's label field is 0); then the encoded image (JPEG in insightface sets).
- insightface convention: record 0 is a header whose label array is (first identity record key, end key);
  image records are keys 1 .. first-1; each identity record holds the [start, end) range of its image keys.
  Without that header (flag 0 in record 0) every record is an image.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lh2face.io import ImageReadError, atomic_write

from .transforms import Transform, as_rgb_uint8, check_on_error, load_sample, logger

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24

PathLike = Union[str, os.PathLike]


class RecordIOError(ValueError):
    """A .rec/.idx file is malformed (bad magic, truncated record, inconsistent index)."""


class IRHeader(NamedTuple):
    """MXNet image-record header. label: float, or float32 array when flag > 0."""

    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int


# ------------------------------------------------------------------------------------- payloads


def pack_payload(header: IRHeader, data: bytes = b"") -> bytes:
    """IRHeader + bytes -> record payload (as MXNet recordio.pack)."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_IR_FORMAT, 0, float(label), int(header.id), int(header.id2)) + data
    arr = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, arr.size, 0.0, int(header.id), int(header.id2)) + arr.tobytes() + data


def unpack_payload(payload: bytes, name: str = "record") -> Tuple[IRHeader, bytes]:
    """Record payload -> (IRHeader, remaining bytes), as MXNet recordio.unpack."""
    if len(payload) < _IR_SIZE:
        raise RecordIOError(f"{name}: payload of {len(payload)} bytes is shorter than the 24-byte IRHeader")
    flag, label, id1, id2 = struct.unpack_from(_IR_FORMAT, payload)
    rest = payload[_IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"{name}: IRHeader announces {flag} labels but the record is too short")
        arr = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, arr, id1, id2), rest[4 * flag :]
    return IRHeader(flag, float(label), id1, id2), rest


def _first_label(header: IRHeader) -> int:
    lab = header.label
    return int(lab[0]) if isinstance(lab, np.ndarray) else int(lab)


# ------------------------------------------------------------------------------------- raw records


def write_record(fh: Any, payload: bytes) -> None:
    """Append one record (split at aligned magic words, padded to 4 bytes) to a binary file handle."""
    n = len(payload)
    if n >= 1 << 29:
        raise RecordIOError(f"record of {n} bytes exceeds the RecordIO limit of 2^29 bytes")
    start = 0
    for i in range(0, n - n % 4, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            cflag = 1 if start == 0 else 2
            fh.write(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | (i - start)) + payload[start:i])
            start = i + 4
    cflag = 3 if start > 0 else 0
    tail = payload[start:]
    fh.write(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(tail)) + tail)
    fh.write(b"\0" * ((-n) % 4))


def read_record(fh: Any, name: str = "rec") -> Optional[bytes]:
    """Read the record at the handle's position; None at a clean end of file."""
    parts: List[bytes] = []
    while True:
        pos = fh.tell()
        head = fh.read(8)
        if not head and not parts:
            return None
        if len(head) < 8:
            raise RecordIOError(f"{name}: truncated record header at byte {pos}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{name}: bad magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x}); "
                                "the .idx does not match the .rec or the file is corrupt")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        data = fh.read(length + (-length) % 4)
        if len(data) < length:
            raise RecordIOError(f"{name}: record at byte {pos} is truncated ({len(data)} of {length} bytes)")
        expected = (0, 1) if not parts else (2, 3)
        if cflag not in expected:
            raise RecordIOError(f"{name}: unexpected continuation flag {cflag} at byte {pos}")
        parts.append(data[:length])
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def scan_offsets(rec_path: PathLike) -> List[int]:
    """Byte offsets of every record in a .rec (used when there is no .idx)."""
    offsets = []
    with open(rec_path, "rb") as fh:
        while True:
            pos = fh.tell()
            head = fh.read(8)
            if not head:
                return offsets
            if len(head) < 8:
                raise RecordIOError(f"{rec_path}: truncated record header at byte {pos}")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(f"{rec_path}: bad magic at byte {pos}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag in (0, 1):
                offsets.append(pos)
            fh.seek(length + (-length) % 4, io.SEEK_CUR)


def read_idx(idx_path: PathLike) -> Dict[int, int]:
    """Parse a .idx file: {key: byte offset}."""
    out: Dict[int, int] = {}
    with open(idx_path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            try:
                key, off = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line!r}") from None
            out[key] = off
    return out


class RecordIOReader:
    """Random access to an indexed .rec. Re-opens its file in each process (safe for DataLoader workers)."""

    def __init__(self, rec_path: PathLike, idx_path: Optional[PathLike] = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO file '{rec_path}' does not exist")
        if idx_path is None:
            cand = self.rec_path.with_suffix(".idx")
            idx_path = cand if cand.is_file() else None
        if idx_path is not None:
            if not Path(idx_path).is_file():
                raise FileNotFoundError(f"RecordIO index '{idx_path}' does not exist")
            self.index = read_idx(idx_path)
        else:
            logger.info("%s: no .idx beside it; scanning the records to index them", rec_path)
            self.index = {i: off for i, off in enumerate(scan_offsets(self.rec_path))}
        self.keys: List[int] = sorted(self.index)
        self._fh: Optional[Any] = None
        self._pid: Optional[int] = None

    def _file(self) -> Any:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._fh

    def read(self, key: int) -> bytes:
        """Payload of record `key`."""
        if key not in self.index:
            raise KeyError(f"{self.rec_path}: no record with key {key}")
        fh = self._file()
        fh.seek(self.index[key])
        data = read_record(fh, str(self.rec_path))
        if data is None:
            raise RecordIOError(f"{self.rec_path}: index points past the end of the file for key {key}")
        return data

    def read_header(self, key: int) -> IRHeader:
        """Only the IRHeader of record `key`: reads its first bytes, not the image."""
        if key not in self.index:
            raise KeyError(f"{self.rec_path}: no record with key {key}")
        name = f"{self.rec_path}[{key}]"
        fh = self._file()
        fh.seek(self.index[key])
        head = fh.read(8 + _IR_SIZE)
        if len(head) >= 8:
            magic, lrec = struct.unpack_from("<II", head)
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if magic == MAGIC and cflag == 0 and length >= _IR_SIZE and len(head) == 8 + _IR_SIZE:
                flag = struct.unpack_from("<I", head, 8)[0]
                if flag == 0:
                    return unpack_payload(head[8:], name)[0]
                if length >= _IR_SIZE + 4 * flag:
                    return unpack_payload(head[8:] + fh.read(4 * flag), name)[0]
        return unpack_payload(self.read(key), name)[0]  # split or odd record: read it whole

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------- writer


def _encode(image: Any, encoding: str, quality: int, name: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    arr = as_rgb_uint8(image.numpy() if torch.is_tensor(image) else np.asarray(image), name)
    buf = io.BytesIO()
    if encoding in ("jpg", "jpeg"):
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    elif encoding == "png":
        Image.fromarray(arr).save(buf, format="PNG")
    else:
        raise ValueError(f"write_recordio: encoding must be 'jpg' or 'png', got {encoding!r}")
    return buf.getvalue()


_MAX_EXACT_KEY = 1 << 24  # keys and labels are stored as float32 in the IRHeader label fields


def write_recordio(
    rec_path: PathLike,
    samples: Iterable[Tuple[Any, int]],
    idx_path: Optional[PathLike] = None,
    encoding: str = "jpg",
    quality: int = 95,
    identity_records: bool = True,
    grouped: bool = False,
) -> int:
    """Write (image, label) samples as an insightface-style indexed RecordIO pair.

    Args:
        samples: iterable of (image, label); image is uint8 (H, W[, C]) RGB/grey or already-encoded bytes.
        idx_path: default rec_path with suffix .idx.
        encoding: 'jpg' (insightface's choice) or 'png' (lossless) for array images.
        identity_records: write record 0 (identity key range) and one record per identity (its image key
            range), as in MS1MV2; images are grouped by label. False writes images only, keys from 0.
        grouped: the samples already come grouped by label (e.g. an ImageFolder in order): they are
            streamed to disk as they come (constant memory) and a label that re-appears later is an error.
            Otherwise the encoded images are held in memory, then written grouped by ascending label
            (stable within a label).
    Returns the number of image records. Both files are written atomically.
    """
    idx_path = Path(rec_path).with_suffix(".idx") if idx_path is None else Path(idx_path)
    offsets: List[Tuple[int, int]] = []

    def encoded() -> Iterator[Tuple[int, bytes]]:
        for i, (img, lab) in enumerate(samples):
            lab = int(lab)
            if lab < 0 or lab >= _MAX_EXACT_KEY:
                raise ValueError(f"write_recordio: sample {i} has label {lab}; labels must be ints in [0, 2^24)")
            yield lab, _encode(img, encoding, quality, f"sample {i}")

    with atomic_write(rec_path, "wb") as fh:

        def put(key: int, payload: bytes) -> None:
            offsets.append((key, fh.tell()))
            write_record(fh, payload)

        if not identity_records:
            n = 0
            for n, (lab, data) in enumerate(encoded(), start=1):
                put(n - 1, pack_payload(IRHeader(0, float(lab), n - 1, 0), data))
        else:
            if grouped:
                stream: Iterable[Tuple[int, bytes]] = encoded()
            else:
                groups: Dict[int, List[bytes]] = {}
                for lab, data in encoded():
                    groups.setdefault(lab, []).append(data)
                stream = ((lab, data) for lab in sorted(groups) for data in groups[lab])

            def header0(first: int, end: int) -> bytes:
                return pack_payload(IRHeader(2, np.array([first, end], np.float32), 0, 0))

            put(0, header0(0, 0))  # placeholder of the same size; rewritten once the counts are known
            ranges: Dict[int, List[int]] = {}
            key, prev = 0, None
            for key, (lab, data) in enumerate(stream, start=1):
                if lab != prev:
                    if lab in ranges:
                        raise ValueError(
                            f"write_recordio(grouped=True): label {lab} re-appears after other labels; "
                            "sort the samples by label or pass grouped=False"
                        )
                    ranges[lab] = [key, key]
                    prev = lab
                ranges[lab][1] = key + 1
                put(key, pack_payload(IRHeader(0, float(lab), key, 0), data))
            n = key
            first_id_key = n + 1
            if first_id_key + len(ranges) >= _MAX_EXACT_KEY:
                raise ValueError("write_recordio: more than 2^24 records cannot be indexed exactly (float32 labels)")
            for j, (a, b) in enumerate(ranges.values()):
                put(first_id_key + j, pack_payload(IRHeader(2, np.array([a, b], np.float32), 0, 0)))
            end_pos = fh.tell()
            fh.seek(0)
            write_record(fh, header0(first_id_key, first_id_key + len(ranges)))
            fh.seek(end_pos)
    with atomic_write(idx_path, "w") as fh:
        fh.write("".join(f"{k}\t{off}\n" for k, off in offsets))
    return n


# ------------------------------------------------------------------------------------- dataset


class RecordIODataset(Dataset):
    """Images of an insightface .rec/.idx: item -> (image float (3, S, S) in [0, 1], label int).

    Args:
        rec_path: the .rec file; idx_path: its .idx (default: beside it; scanned if absent).
        image_size: output side S (resized if the stored image differs); None keeps the stored size.
        on_error: "raise" (ImageReadError naming rec[key]) or "skip" (None, logged, counted in num_failed).
        transform: optional callable on the float image tensor.
    Attributes: keys (image record keys), num_classes, targets (labels of every image, read lazily from
    the record headers on first use).
    """

    def __init__(
        self,
        rec_path: PathLike,
        idx_path: Optional[PathLike] = None,
        image_size: Optional[int] = 112,
        on_error: str = "raise",
        transform: Optional[Transform] = None,
    ) -> None:
        self.reader = RecordIOReader(rec_path, idx_path)
        self.image_size = image_size
        self.on_error = check_on_error(on_error)
        self.transform = transform
        self.num_failed = 0
        self.identity_range: Optional[Tuple[int, int]] = None
        self._targets: Optional[List[int]] = None
        keys = self.reader.keys
        if not keys:
            raise RecordIOError(f"{rec_path}: contains no records")
        head0 = self.reader.read_header(keys[0]) if keys[0] == 0 else None
        if head0 is not None and head0.flag > 0 and isinstance(head0.label, np.ndarray) and head0.label.size >= 2:
            first, end = int(head0.label[0]), int(head0.label[1])
            self.identity_range = (first, end)
            self.keys = [k for k in keys if 1 <= k < first]
        else:
            self.keys = list(keys)

    @property
    def num_classes(self) -> int:
        if self.identity_range is not None:
            return self.identity_range[1] - self.identity_range[0]
        return max(self.targets) + 1 if self.keys else 0

    @property
    def targets(self) -> List[int]:
        """Label of every image record (headers only; cached)."""
        if self._targets is None:
            self._targets = self._targets_from_identities()
            if self._targets is None:
                self._targets = [_first_label(self.reader.read_header(k)) for k in self.keys]
        return self._targets

    def _targets_from_identities(self) -> Optional[List[int]]:
        """With identity records (MS1MV2-style), one header per identity instead of one per image."""
        if self.identity_range is None:
            return None
        label_of: Dict[int, int] = {}
        for _, (a, b) in self.iter_identities():
            if a >= b or a not in self.reader.index:
                return None
            lab = _first_label(self.reader.read_header(a))
            for k in range(a, b):
                label_of[k] = lab
        if any(k not in label_of for k in self.keys):
            return None  # ranges do not cover every image: fall back to reading each header
        return [label_of[k] for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Optional[Tuple[torch.Tensor, int]]:
        key = self.keys[index]
        name = f"{self.reader.rec_path}[{key}]"
        try:
            header, data = unpack_payload(self.reader.read(key), name)
            image = load_sample(data, name, self.image_size)
        except (ImageReadError, RecordIOError) as exc:
            if self.on_error == "raise":
                if isinstance(exc, ImageReadError):
                    raise
                raise ImageReadError(str(exc)) from exc
            self.num_failed += 1
            logger.warning("skipping unreadable record %s: %s", name, exc)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, _first_label(header)

    def iter_identities(self) -> Iterator[Tuple[int, Tuple[int, int]]]:
        """(identity record key, (first image key, end image key)) from the identity records, if present."""
        if self.identity_range is None:
            return
        for key in range(*self.identity_range):
            h = self.reader.read_header(key)
            if isinstance(h.label, np.ndarray) and h.label.size >= 2:
                yield key, (int(h.label[0]), int(h.label[1]))
