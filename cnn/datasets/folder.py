"""Image-folder trees (torchvision ``ImageFolder`` / Keras ``image_dataset_from_directory``).

Layouts: ``DIR/<class>/*.{png,jpg,jpeg,bmp,gif,webp}`` (a seeded, stratified
``test_fraction`` of each class is held out), or ``DIR/train/<class>/...`` with
``DIR/test/<class>/...`` and optionally ``DIR/val/<class>/...``. Class names
are the sorted folder names; hidden files and folders are ignored.

Decoding is :mod:`cnn.images.crop`, the function prediction uses too: EXIF
orientation applied, converted to L (grayscale) or RGB (alpha dropped), then,
when the size differs from ``image_size``, the short side is resized to fit and
the centre cropped (``PIL.ImageOps.fit``, bilinear), so the aspect ratio is
kept and nothing is padded. JPEGs are decoded at a reduced scale when that is
still larger than the target (``Image.draft``). Images are decoded once, in
parallel, into the cache (:mod:`cnn.datasets.cache`).
"""
import concurrent.futures
import concurrent.futures.process
import hashlib
import multiprocessing
import os
import sys
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn import images
from cnn._threads import available_cores
from cnn.data import DataError
from cnn.datasets import cache
from cnn.datasets.base import ImageDataset
from cnn.images.policy import upload_record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}
RESIZE_POLICY = "exif-transpose, resize short side (bilinear), centre crop"
DECODER = "cnn.images.crop/1"   # part of the cache key: change it when decoding changes
SHOW = 5            # paths named in a message
CHUNK = 512         # images per decode task
PARALLEL_MIN = 4096  # fewer images decode faster than worker processes start
# Pillow refuses bigger images as decompression bombs; keep its default.
TRAINING_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 2 ** 62
DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError,
                 Image.DecompressionBombError, EOFError)


def _visible(name):
    return not name.startswith(".")


def _subfolders(path):
    try:
        return sorted(e.name for e in os.scandir(path) if _visible(e.name) and e.is_dir())
    except OSError as exc:
        raise DataError(f"{path}: cannot list: {exc.strerror or exc}") from None


def is_image_folder(path):
    return os.path.isdir(path) and bool(_subfolders(path))


def _layout(root):
    """{split: folder}: "train"/"val"/"test" folders, or {"all": root}."""
    subs = _subfolders(root)
    if not subs:
        raise DataError(f"{root}: no class folders; an image folder holds "
                        f"DIR/<class>/*.png|jpg|... or DIR/train/<class>/... and "
                        f"DIR/test/<class>/...")
    if "train" in subs and set(subs) <= set(SPLIT_FOLDERS):
        return {s: os.path.join(root, s) for s in SPLIT_FOLDERS if s in subs}
    return {"all": root}


def _scan(root, split_root, classes):
    """[(relpath, class index)] of the image files, and [(relpath, reason)] skipped."""
    files, skipped = [], []
    for label, name in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_root, name)):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for f in sorted(filenames):
                if not _visible(f):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    files.append((rel, label))
                    found += 1
                else:
                    skipped.append((rel, "not an image file name (.png, .jpg, .jpeg, .bmp, "
                                         ".gif, .webp)"))
        if not found:
            raise DataError(f"class folder {os.path.join(split_root, name)} holds no image "
                            f"files")
    return files, skipped


def _oriented(im):
    """(width, height) once EXIF orientation is applied."""
    w, h = im.size
    # PNG's getexif() decodes the whole image to look for an eXIf chunk after
    # the pixels; one before them (where writers put it) is already in info.
    if im.format == "PNG" and "exif" not in im.info:
        return w, h
    try:
        if im.getexif().get(0x0112) in (5, 6, 7, 8):
            return h, w
    except DECODE_ERRORS:
        pass
    return w, h


def probe_image(path):
    """((width, height), is grayscale) from the header only."""
    with Image.open(path) as im:
        return _oriented(im), im.mode in GRAY_MODES


def decode_image(path, size, channels):
    """The image at ``path`` as uint8 (H, W) or (H, W, 3), never inverted.

    This is ``cnn.images.decode_image(..., fit="crop")``, the function that
    prediction and the service use for models trained on image folders (see
    :mod:`cnn.images.crop`), with Pillow's own pixel limit instead of the
    service's: a user's own photos may be large."""
    return images.decode_image(path, size=tuple(size), channels=channels, fit="crop",
                               invert=False, max_pixels=TRAINING_MAX_PIXELS,
                               allowed_formats=images.ALLOWED_FORMATS)


def _skip_message(skipped, total):
    shown = "; ".join(f"{rel} ({why})" for rel, why in skipped[:SHOW])
    more = f" and {len(skipped) - SHOW} more" if len(skipped) > SHOW else ""
    return f"{len(skipped)} of {total} files are not readable images: {shown}{more}"


def _probe_chunk(paths):
    out = []
    for path in paths:
        try:
            out.append(probe_image(path))
        except DECODE_ERRORS as exc:     # (Pillow names the path: the message names it once)
            out.append(f"{type(exc).__name__}: {str(exc).replace(repr(path), 'file')}")
    return out


def _decode_chunk(raw_path, jobs, size, channels):
    """Decode ``jobs`` ((row, path) pairs) into rows of the .npy at ``raw_path``
    (opened here: worker processes share it through the page cache)."""
    raw = np.load(raw_path, mmap_mode="r+")
    failed = []
    for j, path in jobs:
        try:
            raw[j] = decode_image(path, size, channels)
        except images.ImageError as exc:      # (its message without the path again)
            failed.append((j, exc.reason))
        except DECODE_ERRORS as exc:
            failed.append((j, f"{type(exc).__name__}: {exc}"))
    raw.flush()
    return failed


def _parallel(fn, tasks, total, progress, desc):
    """[fn(*args) for count, args in tasks], with a progress bar (``count`` images
    per task) on a terminal.

    Small images decode in ~0.1 ms, mostly Python holding the GIL, so threads
    do not help; big jobs use one forked process per core (as PyTorch's
    DataLoader does on Linux; spawned workers would re-run a caller's script
    that lacks a ``__main__`` guard), small ones, or where there is no fork,
    run here."""
    from tqdm.auto import tqdm
    show = sys.stderr.isatty() if progress is None else progress
    cores = available_cores()
    with tqdm(total=total, desc=desc, unit="img", disable=not show, leave=False) as bar:
        if cores == 1 or total < PARALLEL_MIN or \
                "fork" not in multiprocessing.get_all_start_methods():
            results = []
            for count, args in tasks:
                results.append(fn(*args))
                bar.update(count)
            return results
        results = [None] * len(tasks)
        context = multiprocessing.get_context("fork")
        try:
            with concurrent.futures.ProcessPoolExecutor(cores, mp_context=context) as pool:
                futures = {pool.submit(fn, *args): i for i, (_, args) in enumerate(tasks)}
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.update(tasks[i][0])
        except (concurrent.futures.process.BrokenProcessPool, OSError):
            # a worker died (out of memory, killed): do the rest here
            for i, (count, args) in enumerate(tasks):
                if results[i] is None:
                    results[i] = fn(*args)
                    bar.update(count)
        return results


def _stratified_split(labels, num_classes, test_fraction, seed):
    """Indices (train, test): round(n * test_fraction) of each class's n images held
    out (at most n - 1), chosen by ``seed`` from the class's files in path order."""
    rng = np.random.default_rng(seed)
    test = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        test.extend(idx[rng.permutation(len(idx))[:n_test]].tolist())
    test = np.array(sorted(test), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def split_digest(rels):
    return hashlib.sha256("\n".join(sorted(rels)).encode()).hexdigest()


def load_folder(data_dir, image_size=None, channels=None, test_fraction=0.1, seed=0,
                cache_dir=None, strict=False, progress=None, log=None):
    """Load an image-folder tree as an :class:`ImageDataset` (see the module docstring).

    ``image_size`` (H, W) and ``channels`` (1 or 3) default to the data's own when
    every image agrees. Files that are not readable images are skipped (``log``
    gets one line naming the first few) or, with ``strict``, an error.
    """
    root = os.path.abspath(os.fspath(data_dir))
    layout = _layout(root)
    train_root = layout.get("train", layout.get("all"))
    classes = _subfolders(train_root)
    if len(classes) < 2:
        raise DataError(f"{train_root}: a classifier needs at least 2 class folders, found "
                        f"{len(classes)}: {', '.join(classes) or 'none'}")
    entries, skipped, tags = [], [], []
    for split, split_root in layout.items():
        if split != "all" and split != "train":
            extra = sorted(set(_subfolders(split_root)) - set(classes))
            if extra:
                raise DataError(f"{split_root}: class folder(s) {', '.join(extra)} have no "
                                f"counterpart in {train_root} (classes: {', '.join(classes)})")
            names = [c for c in classes if os.path.isdir(os.path.join(split_root, c))]
            files, skip = _scan(root, split_root, names)
            files = [(rel, classes.index(names[label])) for rel, label in files]
        else:
            files, skip = _scan(root, split_root, classes)
        entries += files
        skipped += skip
        tags += [split] * len(files)
    total = len(entries) + len(skipped)
    if strict and skipped:
        raise DataError(f"{root}: {_skip_message(skipped, total)} (strict)")
    held_out = "test" not in layout
    if held_out and not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1) when {root} has no test/ folder, "
                        f"got {test_fraction!r}")

    stats = []
    for rel, _ in entries:
        st = os.stat(os.path.join(root, rel))
        stats.append((rel, st.st_size, st.st_mtime_ns))
    settings = {"image_size": list(image_size) if image_size else None, "channels": channels,
                "test_fraction": test_fraction if held_out else None,
                "seed": seed if held_out else None, "strict": bool(strict),
                "resize": RESIZE_POLICY, "decoder": DECODER}
    cache_dir = cache_dir or cache.default_cache_dir()
    key = cache.cache_key(stats, settings)
    hit = cache.load(cache_dir, key)
    if hit is None:
        _build(root, entries, tags, skipped, total, classes, image_size, channels,
               test_fraction, seed, held_out, strict, cache_dir, key, progress)
        hit = cache.load(cache_dir, key)
        if hit is None:
            raise DataError(f"{cache_dir}: could not read back the decode cache entry {key}")
    images, labels, meta = hit
    if meta["skipped"] and log:
        log(f"skipped {meta['skipped_message']}")
    n_train, n_val = meta["counts"]["train"], meta["counts"]["val"]
    ds = ImageDataset(images[:n_train], labels[:n_train],
                      images[n_train + n_val:], labels[n_train + n_val:],
                      tuple(meta["class_names"]), os.path.basename(root), root,
                      dict(meta["record"], cache=os.path.join(cache_dir, key)),
                      images[n_train:n_train + n_val], labels[n_train:n_train + n_val])
    return ds


def _build(root, entries, tags, skipped, total, classes, image_size, channels,
           test_fraction, seed, held_out, strict, cache_dir, key, progress):
    paths = [os.path.join(root, rel) for rel, _ in entries]
    tasks = [(len(paths[i:i + CHUNK]), (paths[i:i + CHUNK],))
             for i in range(0, len(paths), CHUNK)]
    probed = list(enumerate(r for chunk in _parallel(_probe_chunk, tasks, len(paths),
                                                     progress, "reading") for r in chunk))
    bad = {i: why for i, why in probed if isinstance(why, str)}
    info = {i: r for i, r in probed if not isinstance(r, str)}
    if strict and bad:
        raise DataError(f"{root}: " + _skip_message(
            [(entries[i][0], why) for i, why in sorted(bad.items())], total) + " (strict)")
    if not info:
        raise DataError(f"{root}: none of the {total} files is a readable image")
    requested = (image_size, channels)           # as asked: evaluate asks the same
    if channels is None:
        channels = 1 if all(gray for _, gray in info.values()) else 3
    if image_size is None:
        sizes = Counter((h, w) for (w, h), _ in info.values())
        if len(sizes) > 1:
            found = ", ".join(f"{h}x{w} ({n} images)" for (h, w), n in sizes.most_common(SHOW))
            more = f" and {len(sizes) - SHOW} more sizes" if len(sizes) > SHOW else ""
            raise DataError(f"{root}: the images differ in size (HxW): {found}{more}; "
                            f"choose one with --image-size HxW (image_size=(H, W))")
        image_size = next(iter(sizes))
    H, W = image_size
    good = sorted(info)
    # the decoded images twice (file order, then train/val/test order) at the peak
    entry = cache.Entry(cache_dir, key, need_bytes=2 * len(good) * H * W * channels)
    try:
        raw = entry.array("raw", (len(good), H, W) if channels == 1 else (len(good), H, W, 3))

        jobs = [(j, paths[i]) for j, i in enumerate(good)]
        tasks = [(len(jobs[k:k + CHUNK]),
                  (os.path.join(entry.tmp, "raw.npy"), jobs[k:k + CHUNK], (H, W), channels))
                 for k in range(0, len(jobs), CHUNK)]
        raw.flush()
        failed = [f for chunk in _parallel(_decode_chunk, tasks, len(jobs), progress,
                                           "decoding") for f in chunk]
        for j, why in failed:
            bad[good[j]] = why
        if strict and failed:
            raise DataError(f"{root}: " + _skip_message(
                [(entries[i][0], why) for i, why in sorted(bad.items())], total) + " (strict)")
        ok = np.array(sorted(set(range(len(good))) - {j for j, _ in failed}), dtype=np.int64)
        index = np.array(good, dtype=np.int64)[ok]           # into entries
        labels = np.array([entries[i][1] for i in index], dtype=np.int64)
        split = np.array([tags[i] for i in index])
        rels = [entries[i][0] for i in index]
        train_pool = np.flatnonzero((split == "train") | (split == "all"))
        for c, name in enumerate(classes):
            if not np.any(labels[train_pool] == c):
                raise DataError(f"class {name!r} has no readable training images in "
                                f"{root}")
        if held_out:
            tr, te = _stratified_split(labels[train_pool], len(classes),
                                       test_fraction, seed)
            train, test = train_pool[tr], train_pool[te]
            if len(test) == 0:
                raise DataError(f"{root}: test_fraction {test_fraction} of "
                                f"{len(train_pool)} images holds out none: raise it or "
                                f"add a test/ folder")
        else:
            train, test = train_pool, np.flatnonzero(split == "test")
        # Training images are stored in a fixed shuffled order, not class by
        # class, so that the first N (train --limit N) hold every class.
        train = train[np.random.default_rng(0).permutation(len(train))]
        val = np.flatnonzero(split == "val")
        order = np.concatenate([train, val, test])
        shape = (len(order), H, W) if channels == 1 else (len(order), 3, H, W)
        images = entry.array("images", shape)
        for s in range(0, len(order), 4096):     # channels-last -> first, in chunks
            block = raw[ok[order[s:s + 4096]]]
            images[s:s + len(block)] = block if channels == 1 else block.transpose(0, 3, 1, 2)
        images.flush()
        images_train = images[:len(train)]
        record_uploads = upload_record(images_train, "crop")
        del images, raw, images_train
        entry.remove("raw")
        skipped_all = skipped + [(entries[i][0], why) for i, why in sorted(bad.items())]
        test_rels = [rels[i] for i in test]
        record = {
            "source_kind": "folder", "input_shape": [channels, H, W],
            "channel_order": "L" if channels == 1 else "RGB", "resize": RESIZE_POLICY,
            **record_uploads,
            "class_names": list(classes),
            "settings": {"image_size": list(requested[0]) if requested[0] else None,
                         "channels": requested[1]},
            "split": {"kind": "seeded" if held_out else "folders",
                      "test_fraction": test_fraction if held_out else None,
                      "seed": seed if held_out else None, "test_images": len(test),
                      "test_sha256": split_digest(test_rels)},
            "skipped": len(skipped_all),
        }
        meta = {"class_names": list(classes), "record": record,
                "counts": {"train": len(train), "val": len(val), "test": len(test)},
                "skipped": len(skipped_all),
                "skipped_message": _skip_message(skipped_all, total) if skipped_all else "",
                "test_files": test_rels}
        entry.commit(labels[order], meta)
    except BaseException:
        entry.abort()
        raise
