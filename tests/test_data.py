"""recognition.data: ImageFolder, RecordIO, verification .bin, LFW pairs, skip/raise behaviour, collate."""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lh2face.io import ImageReadError
from recognition.data import (
    CollatedBatch,
    ImageFolderDataset,
    IRHeader,
    RecordIODataset,
    RecordIOReader,
    UnsafePickleError,
    collate_skip_none,
    load_verification_bin,
    pack_payload,
    read_lfw_pairs,
    read_record,
    unpack_payload,
    write_record,
    write_recordio,
    write_verification_bin,
)
from recognition.data.image_folder import ImageListDataset
from recognition.data.recordio import _first_label

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ATT = SHARED / "att_faces"
LFW = SHARED / "lfw-dev"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real photos beside the checkout) absent")
MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a little-endian


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _save(path: Path, arr: np.ndarray, fmt: str, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)  # exact colours, no dithering
    im.save(path, format=fmt)


def _read_pgm_by_hand(path: Path) -> np.ndarray:
    """Binary PGM (P5, maxval 255) parsed with numpy alone: an independent decoder for the AT&T files."""
    data = path.read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    pos += 1  # the single whitespace after maxval
    assert fields[0] == b"P5" and int(fields[3]) == 255
    w, h = int(fields[1]), int(fields[2])
    return np.frombuffer(data, np.uint8, count=w * h, offset=pos).reshape(h, w)


# --------------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    _save(root / "bob" / "1.png", np.full((112, 112, 3), (10, 200, 30), np.uint8), "PNG")
    _save(root / "bob" / "2.pgm", np.full((112, 112), 77, np.uint8), "PPM")  # grey PGM
    _save(root / "alice" / "a.png", np.full((64, 64, 4), (5, 6, 7, 128), np.uint8), "PNG")  # RGBA, small
    _save(root / "alice" / "b.jpg", np.full((120, 100, 3), 128, np.uint8), "JPEG")
    _save(root / "carol" / "p.png", np.full((112, 112, 3), 50, np.uint8), "PNG", mode="P")  # palette
    (root / "carol" / "notes.txt").write_text("not an image")  # ignored by extension
    (root / "empty_identity").mkdir()
    return root


def test_image_folder_labels_formats_and_sizes(folder: Path):
    ds = ImageFolderDataset(folder, image_size=112)
    assert ds.classes == ["alice", "bob", "carol"]  # sorted; the empty folder gets no label
    assert ds.targets == [0, 0, 1, 1, 2] and len(ds) == 5
    items = [ds[i] for i in range(len(ds))]
    for img, _ in items:
        assert img.shape == (3, 112, 112) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
    # constant images stay constant through decoding and resizing: exact colours expected
    torch.testing.assert_close(items[0][0][:, 5, 5], torch.tensor([5, 6, 7]) / 255.0)  # RGBA -> RGB
    assert items[0][0].std(dim=(1, 2)).max() == 0
    torch.testing.assert_close(items[2][0], (torch.tensor([10, 200, 30]) / 255.0)[:, None, None].expand(3, 112, 112))
    torch.testing.assert_close(items[3][0], torch.full((3, 112, 112), 77 / 255.0))  # grey -> 3 equal channels
    torch.testing.assert_close(items[4][0], torch.full((3, 112, 112), 50 / 255.0))  # palette
    assert abs(items[1][0].mean().item() - 128 / 255) < 2 / 255  # JPEG, 100x120 resized


def test_high_bit_depth_and_two_channel_images(tmp_path: Path):
    ramp16 = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)  # up to 57300 of 65535
    _save(tmp_path / "id" / "a16.pgm", ramp16, "PPM")  # 16-bit binary PGM, maxval 65535
    la = np.zeros((12, 16, 2), np.uint8)
    la[..., 0], la[..., 1] = 90, 255
    Image.fromarray(la, mode="LA").save(tmp_path / "id" / "b_la.png")
    ds = ImageFolderDataset(tmp_path, image_size=None)
    img16, _ = ds[0]
    expected = np.rint(ramp16 / 65535.0 * 255.0) / 255.0  # scaled by the file's maxval
    for c in range(3):
        np.testing.assert_allclose(img16[c].numpy(), expected, atol=1e-6)
    img_la, _ = ds[1]
    assert img_la.shape == (3, 12, 16)
    torch.testing.assert_close(img_la, torch.full((3, 12, 16), 90 / 255.0))


@needs_shared
def test_att_faces_match_an_independent_pgm_decoder():
    ds = ImageFolderDataset(ATT, image_size=None)
    assert ds.num_classes == 40 and len(ds) == 400
    assert ds.classes[:3] == ["s1", "s10", "s11"]  # lexicographic folder order
    for index in (0, 7, 399):
        path, label = ds.samples[index]
        img, lab = ds[index]
        ref = torch.from_numpy(_read_pgm_by_hand(Path(path)).astype(np.float32) / 255.0)
        assert lab == label and img.shape == (3, 112, 92)
        for c in range(3):
            assert torch.equal(img[c], ref)
    resized = ImageFolderDataset(ATT, image_size=112)[0][0]
    assert resized.shape == (3, 112, 112)
    assert abs(resized.mean().item() - ds[0][0].mean().item()) < 0.01  # resizing preserves brightness


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    good = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    _save(root / "a" / "good1.png", good, "PNG")
    _save(root / "a" / "good2.png", good, "PNG")
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b").mkdir()
    (root / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    png = _png(good)
    (root / "b" / "truncated.png").write_bytes(png[: len(png) // 2])
    _save(root / "b" / "good3.png", good, "PNG")
    return root


def test_bad_images_raise_naming_the_file(bad_folder: Path):
    ds = ImageFolderDataset(bad_folder, image_size=32, on_error="raise")
    names = [Path(p).name for p, _ in ds.samples]
    for bad in ("zero.jpg", "garbage.jpg", "truncated.png"):
        with pytest.raises(ImageReadError, match=bad):
            ds[names.index(bad)]
    assert ds[names.index("good1.png")][0].shape == (3, 32, 32)


def test_bad_images_skipped_logged_and_collated(bad_folder: Path, caplog):
    ds = ImageFolderDataset(bad_folder, image_size=32, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="recognition.data"):
        items = [ds[i] for i in range(len(ds))]
    assert sum(item is None for item in items) == 3 and ds.num_failed == 3
    for bad in ("zero.jpg", "garbage.jpg", "truncated.png"):
        assert any(bad in rec.getMessage() for rec in caplog.records)
    assert sorted(Path(f).name for f in ds.failed_files) == ["garbage.jpg", "truncated.png", "zero.jpg"]

    # sorted order: a/good1, a/good2, a/zero, b/garbage, b/good3, b/truncated
    loader = DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate_skip_none)
    batches = list(loader)
    assert [b.skipped for b in batches] == [1, 2]
    (x1, y1), (x2, y2) = batches
    assert x1.shape == (2, 3, 32, 32) and y1.tolist() == [0, 0]
    assert x2.shape == (1, 3, 32, 32) and y2.tolist() == [1]
    torch.testing.assert_close(x2[0], x1[0])  # the same picture
    # .skipped survives the worker process queue (pickling)
    workers = list(DataLoader(ds, batch_size=3, collate_fn=collate_skip_none, num_workers=1))
    assert [b.skipped for b in workers] == [1, 2]


def test_collate_skip_none_edge_cases():
    assert collate_skip_none([None, None]) is None
    img = torch.ones(3, 4, 4)
    out = collate_skip_none([(img, 1), None, (img * 0, 2)])
    assert isinstance(out, CollatedBatch) and out.skipped == 1 and out[1].tolist() == [1, 2]
    again = pickle.loads(pickle.dumps(out))
    assert again.skipped == 1 and torch.equal(again[0], out[0])
    d = collate_skip_none([{"image": img, "label": 3}, None])
    assert d["skipped"] == 1 and d["image"].shape == (1, 3, 4, 4)


def test_image_folder_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        ImageListDataset([], on_error="ignore")


# --------------------------------------------------------------------------------- RecordIO


def test_record_bytes_match_the_format_by_hand():
    buf = io.BytesIO()
    write_record(buf, b"abcde")
    assert buf.getvalue() == MAGIC + struct.pack("<I", 5) + b"abcde" + b"\0\0\0"
    # an aligned magic word inside the payload splits the record: part cflag=1, then cflag=3
    payload = b"1234" + MAGIC + b"xy"
    buf = io.BytesIO()
    write_record(buf, payload)
    expected = MAGIC + struct.pack("<I", (1 << 29) | 4) + b"1234" + MAGIC + struct.pack("<I", (3 << 29) | 2) + b"xy\0\0"
    assert buf.getvalue() == expected
    buf.seek(0)
    assert read_record(buf) == payload and read_record(buf) is None
    # two magic words -> first, middle, last parts; an unaligned one is not split
    for p in (MAGIC + b"ab" + b"cd" + MAGIC + MAGIC + b"tail!", b"x" + MAGIC + b"yz"):
        buf = io.BytesIO()
        write_record(buf, p)
        buf.seek(0)
        assert read_record(buf) == p
    buf = io.BytesIO()
    write_record(buf, b"x" + MAGIC + b"yz")
    assert len(buf.getvalue()) == 8 + 8  # one part, 7 bytes padded to 8


def test_irheader_pack_unpack_by_hand():
    payload = pack_payload(IRHeader(0, 3.0, 7, 9), b"IMG")
    assert payload == struct.pack("<IfQQ", 0, 3.0, 7, 9) + b"IMG"
    h, rest = unpack_payload(payload)
    assert (h.flag, h.label, h.id, h.id2, rest) == (0, 3.0, 7, 9, b"IMG")
    payload = pack_payload(IRHeader(0, np.array([5.0, 12.0]), 0, 0))
    assert payload == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 5.0, 12.0)
    h, rest = unpack_payload(payload)
    assert h.flag == 2 and h.label.tolist() == [5.0, 12.0] and rest == b""


def _images(n: int, seed: int = 0, size: int = 24):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_recordio_round_trip_insightface_layout(tmp_path: Path):
    imgs = _images(6)
    imgs[5] = imgs[5][..., 0]  # a grey image (H, W)
    labels = [2, 0, 1, 0, 2, 1]
    rec = tmp_path / "train.rec"
    assert write_recordio(rec, zip(imgs, labels), encoding="png") == 6
    idx_lines = (tmp_path / "train.idx").read_text().splitlines()
    assert len(idx_lines) == 1 + 6 + 3  # header, images, identities
    ds = RecordIODataset(rec, image_size=None)
    assert len(ds) == 6 and ds.identity_range == (7, 10) and ds.num_classes == 3
    order = sorted(range(6), key=lambda i: labels[i])  # stable grouping by label
    assert ds.targets == [labels[i] for i in order]
    for k, i in enumerate(order):
        img, lab = ds[k]
        ref = imgs[i] if imgs[i].ndim == 3 else np.repeat(imgs[i][..., None], 3, axis=2)
        assert lab == labels[i]
        assert torch.equal(img, torch.from_numpy(ref.transpose(2, 0, 1).astype(np.float32)) / 255.0)
    assert list(ds.iter_identities()) == [(7, (1, 3)), (8, (3, 5)), (9, (5, 7))]
    # labels from the identity records agree with reading every image header
    assert ds._targets_from_identities() == [_first_label(ds.reader.read_header(k)) for k in ds.keys]
    # offsets in the .idx point at record starts
    raw = rec.read_bytes()
    for line in idx_lines:
        off = int(line.split("\t")[1])
        assert raw[off : off + 4] == MAGIC
    # no .idx: scanning the .rec finds the same records
    os.remove(tmp_path / "train.idx")
    scanned = RecordIODataset(rec, image_size=16)
    assert scanned.keys == ds.keys and scanned[0][0].shape == (3, 16, 16)


def test_recordio_streaming_grouped_writer(tmp_path: Path):
    imgs = _images(5, seed=2)
    labels = [0, 0, 3, 3, 1]  # grouped, not sorted: identity records follow the order of appearance
    rec = tmp_path / "stream.rec"
    assert write_recordio(rec, ((im, lab) for im, lab in zip(imgs, labels)), encoding="png", grouped=True) == 5
    ds = RecordIODataset(rec, image_size=None)
    assert ds.targets == labels and ds.identity_range == (6, 9)
    assert list(ds.iter_identities()) == [(6, (1, 3)), (7, (3, 5)), (8, (5, 6))]
    assert torch.equal(ds[2][0], torch.from_numpy(imgs[2].transpose(2, 0, 1)).float() / 255)
    with pytest.raises(ValueError, match="label 0 re-appears"):
        write_recordio(tmp_path / "x.rec", zip(imgs[:3], [0, 1, 0]), grouped=True)
    with pytest.raises(ValueError, match="labels must be"):
        write_recordio(tmp_path / "y.rec", [(imgs[0], -1)])
    assert not (tmp_path / "x.rec").exists()  # atomic: a failed write leaves no file


def test_recordio_jpeg_bytes_and_flat_layout(tmp_path: Path):
    imgs = _images(3, seed=1, size=32)
    smooth = [np.clip(np.cumsum(np.ones_like(im), axis=1) * 7, 0, 255).astype(np.uint8) for im in imgs]
    rec = tmp_path / "flat.rec"
    write_recordio(rec, [(smooth[0], 4), (_png(smooth[1]), 1), (smooth[2], 4)], identity_records=False,
                   encoding="jpg", quality=95)
    ds = RecordIODataset(rec, image_size=32)
    assert ds.keys == [0, 1, 2] and ds.identity_range is None and ds.targets == [4, 1, 4]
    assert torch.equal(ds[1][0], torch.from_numpy(smooth[1].transpose(2, 0, 1)).float() / 255)  # bytes stored as-is
    jpeg_err = (ds[0][0] * 255 - torch.from_numpy(smooth[0].transpose(2, 0, 1)).float()).abs().mean()
    assert jpeg_err < 3.0
    reader = RecordIOReader(rec)
    reader2 = pickle.loads(pickle.dumps(reader))  # picklable for DataLoader workers (file re-opened)
    assert reader2.read(2) == reader.read(2)


def test_recordio_header_only_reads_match_full_reads(tmp_path: Path):
    rec = tmp_path / "h.rec"
    # MAGIC * 3 right after the 24-byte IRHeader is aligned: that record is stored in 4 parts
    write_recordio(rec, [(_images(1)[0], 3), (MAGIC * 3, 1), (b"xyz", 2)], encoding="png")
    reader = RecordIOReader(rec)
    assert reader.read(1)[24:] == MAGIC * 3  # images are grouped by label: key 1 is label 1
    for key in reader.keys:
        fast, (full, _) = reader.read_header(key), unpack_payload(reader.read(key))
        assert (fast.flag, fast.id, fast.id2) == (full.flag, full.id, full.id2)
        assert np.array_equal(fast.label, full.label)


def test_recordio_bad_records(tmp_path: Path, caplog):
    rec = tmp_path / "bad.rec"
    write_recordio(rec, [(_images(1)[0], 0), (b"corrupt jpeg bytes", 0), (b"", 1)], encoding="png")
    ds = RecordIODataset(rec, on_error="raise")
    assert ds[0][0].shape == (3, 112, 112)
    with pytest.raises(ImageReadError, match=r"bad\.rec\[2\]"):
        ds[1]
    skip = RecordIODataset(rec, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="recognition.data"):
        assert skip[1] is None and skip[2] is None
    assert skip.num_failed == 2 and "bad.rec[3]" in caplog.text
    # an .idx that does not match the .rec is reported, not silently misread
    (tmp_path / "bad.idx").write_text("0\t0\n1\t4\n")
    with pytest.raises(ImageReadError, match="bad magic"):
        RecordIODataset(rec, on_error="raise")[0]


# --------------------------------------------------------------------------------- verification .bin


def _pairs_images(n: int):
    return [np.full((20, 20, 3), 10 * i, np.uint8) for i in range(2 * n)]


def test_verification_bin_round_trip(tmp_path: Path):
    imgs = _pairs_images(3)
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, [_png(im) for im in imgs], [True, False, True])
    images, issame = load_verification_bin(path, image_size=20)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 20, 20)
    for i, im in enumerate(imgs):
        assert torch.equal(images[i], torch.from_numpy(im.transpose(2, 0, 1)))
    assert issame.tolist() == [True, False, True]
    raw, _ = load_verification_bin(path, decode=False)
    assert raw[4] == _png(imgs[4])
    resized, _ = load_verification_bin(path, image_size=8)
    assert resized.shape == (6, 3, 8, 8) and int(resized[5, 0, 3, 3]) == 50


def test_verification_bin_python2_and_numpy_variants(tmp_path: Path):
    imgs = [_png(im) for im in _pairs_images(1)]
    # Python 2's pickle of (list of str, list of bool), written opcode by opcode (BINSTRING 'T').
    py2 = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<i", len(b)) + b for b in imgs) + b"e]q\x01\x88a\x86q\x02."
    (tmp_path / "py2.bin").write_bytes(py2)
    images, issame = load_verification_bin(tmp_path / "py2.bin", image_size=20)
    assert images.shape == (2, 3, 20, 20) and issame.tolist() == [True] and int(images[1, 0, 0, 0]) == 10
    # insightface variant: bins as numpy uint8 arrays, issame as numpy bools
    arrs = [np.frombuffer(b, np.uint8) for b in imgs]
    for proto in (2, 4, 5):
        (tmp_path / "np.bin").write_bytes(pickle.dumps((arrs, [np.bool_(False)]), protocol=proto))
        images2, issame2 = load_verification_bin(tmp_path / "np.bin", image_size=20)
        assert torch.equal(images2, images) and issame2.tolist() == [False]


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_verification_bin_refuses_malicious_pickles(tmp_path: Path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil(marker)], [])))
    with pytest.raises(UnsafePickleError, match="system"):
        load_verification_bin(tmp_path / "evil.bin")
    assert not marker.exists()  # the payload never ran
    (tmp_path / "eval.bin").write_bytes(pickle.dumps(([b"a", _EvalEvil()], [True])))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_verification_bin(tmp_path / "eval.bin")
    (tmp_path / "obj.bin").write_bytes(pickle.dumps(([np.array([b"a", None], dtype=object)] * 2, [True])))
    with pytest.raises(UnsafePickleError, match="object"):
        load_verification_bin(tmp_path / "obj.bin")
    (tmp_path / "dict.bin").write_bytes(pickle.dumps(([{"a": 1}, b"x"], [True])))
    with pytest.raises(UnsafePickleError, match="dict"):
        load_verification_bin(tmp_path / "dict.bin")
    (tmp_path / "count.bin").write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="2 per pair"):
        load_verification_bin(tmp_path / "count.bin")
    (tmp_path / "trunc.bin").write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:-3])
    with pytest.raises(ValueError, match="not a readable"):
        load_verification_bin(tmp_path / "trunc.bin")


# --------------------------------------------------------------------------------- LFW pairs


@needs_shared
def test_lfw_pairs_with_real_images(tmp_path: Path):
    text = (
        "2\t2\n"
        "Abdullah_Gul\t1\t2\n"
        "Ann_Veneman\t3\t10\n"
        "Abdullah_Gul\t4\tAnn_Veneman\t5\n"
        "Hu_Jintao\t1\tGray_Davis\t2\n"
        "Hu_Jintao 2 3\n"  # space-separated lines are accepted too
        "Gray_Davis\t1\t7\n"
        "Fidel_Castro\t1\tAbdullah_Gul\t1\n"
        "Bill_McBride\t9\tAnn_Veneman\t3\n"
    )
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", LFW)
    assert len(pairs) == 8 and pairs.n_folds == 2
    assert pairs.issame.tolist() == [True, True, False, False] * 2
    assert pairs.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.path1[0] == LFW / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    assert pairs.path2[1] == LFW / "Ann_Veneman" / "Ann_Veneman_0010.jpg"
    assert pairs.path2[7] == LFW / "Ann_Veneman" / "Ann_Veneman_0003.jpg"
    uniq, i1, i2 = pairs.unique_paths()
    assert len(uniq) == 14  # 16 paths; Ann_Veneman_0003 and Abdullah_Gul_0001 appear twice
    assert all(uniq[i1[k]] == pairs.path1[k] and uniq[i2[k]] == pairs.path2[k] for k in range(8))
    ds = ImageListDataset([(p, 0) for p in uniq[:2]], image_size=112)
    img = ds[0][0]
    ref = np.asarray(Image.open(uniq[0]).convert("RGB").resize((112, 112), Image.Resampling.BILINEAR))
    assert torch.equal(img, torch.from_numpy(ref.transpose(2, 0, 1).copy()).float() / 255)


def test_lfw_pairs_forms_and_errors(tmp_path: Path):
    (tmp_path / "dev.txt").write_text("1\nA\t1\t2\nA\t1\tB\t3\n")  # pairsDevTrain-style header
    p = read_lfw_pairs(tmp_path / "dev.txt", tmp_path, ext="png", check_exists=False)
    assert p.issame.tolist() == [True, False] and p.path2[1] == tmp_path / "B" / "B_0003.png"
    (tmp_path / "nohead.txt").write_text("A\t1\t2\n")
    assert read_lfw_pairs(tmp_path / "nohead.txt", tmp_path, check_exists=False).fold.tolist() == [0]
    with pytest.raises(FileNotFoundError, match="A_0001.png"):
        read_lfw_pairs(tmp_path / "dev.txt", tmp_path, ext="png")
    (tmp_path / "bad.txt").write_text("1\t1\nA\t1\nA\t1\tB\t3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        read_lfw_pairs(tmp_path / "bad.txt", tmp_path, check_exists=False)
    (tmp_path / "count.txt").write_text("10\t300\nA\t1\t2\nA\t1\tB\t3\n")
    with pytest.raises(ValueError, match="header announces"):
        read_lfw_pairs(tmp_path / "count.txt", tmp_path, check_exists=False)
