"""What one /predict request of hostile image files costs to decode.

Builds small files with huge dimensions (16-bit and RGBA PNG, palette PNG with
transparency, WebP, animated WebP and GIF, baseline and progressive JPEG) at
the pixel limit and just above it, the 6000x6000 files of issue 9, and
requests of many files, every one under the 16 MiB body limit. Each case is
decoded the way the service decodes a batch (``cnn.images.decode_images``
with ``on_error``, the per-image and per-request limits) in a fresh
subprocess, which reports wall time, CPU time (``resource.getrusage``) and
the increase of its peak resident memory (VmHWM, reset first, on Linux;
``ru_maxrss`` elsewhere) over what it had after reading the files and
decoding one small image.

Each case runs twice: with the old limits (40 M pixels per image, no budget
per request) and with the defaults of ``cnn.images`` (``MAX_PIXELS``,
``MAX_TOTAL_PIXELS``). ``--baseline REV`` runs the old-limits column with
``cnn/images.py`` as of that git revision (the code before the fix), so the
table shows old code and limits against new::

    python benchmarks/image_cost.py --baseline 4ad5d28
    python benchmarks/image_cost.py --cases png16,webp --json

The target (issue 9): no request under the body limit raises a worker's
resident memory by more than 256 MiB or costs more than 1 s of CPU. Cases are
run one at a time (one core) with a time limit each.
"""
import argparse
import importlib.util
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib

OLD_MAX_PIXELS = 40_000_000
BODY_LIMIT = 16 * 1024 * 1024
TARGET_MIB, TARGET_CPU = 256, 1.0


# --------------------------------------------------------------------------
# Hostile files: tiny encodings of huge, uniform images.

def _png(width, height, depth, color, row, extra=b""):
    """A PNG written directly (Pillow cannot save 16-bit RGBA): ``row`` is
    one row's raw bytes, repeated; ``extra``, chunks before the data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    z = zlib.compressobj(9)
    line = b"\0" + row
    body = b"".join(z.compress(line) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
            + (chunk(*extra) if extra else b"") + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def build(kind, width, height):
    from PIL import Image
    buf = io.BytesIO()
    if kind == "png16":       # 16-bit grey
        return _png(width, height, 16, 0, b"\x75\x30" * width)
    if kind == "png16trns":   # 16-bit grey, one grey value transparent
        return _png(width, height, 16, 0, b"\x75\x30\x00\x00" * (width // 2),
                    extra=(b"tRNS", b"\x00\x00"))
    if kind == "png16rgba":   # 16-bit RGBA, half transparent
        return _png(width, height, 16, 6, b"\xc8\x00\x64\x00\x32\x00\x80\x00" * width)
    if kind == "pngP":        # palette with a transparent entry
        im = Image.new("P", (width, height), 1)
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.save(buf, "PNG", transparency=0)
    elif kind == "webp":      # lossless RGBA
        Image.new("RGBA", (width, height), (200, 200, 200, 100)).save(buf, "WEBP",
                                                                     lossless=True)
    elif kind == "webp_anim":
        frames = [Image.new("RGBA", (width, height), (c, c, c, 255)) for c in (50, 200)]
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    elif kind == "gif_anim":
        frames = [Image.new("P", (width, height), c) for c in (1, 2)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    elif kind == "jpeg":
        Image.new("RGB", (width, height), (200, 200, 200)).save(buf, "JPEG")
    elif kind == "jpeg_prog444":  # progressive: libjpeg keeps every coefficient
        Image.new("RGB", (width, height), (200, 200, 200)).save(
            buf, "JPEG", progressive=True, subsampling=0)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return buf.getvalue()


KINDS = ("png16", "png16trns", "png16rgba", "pngP", "webp", "webp_anim", "gif_anim", "jpeg",
         "jpeg_prog444")


def cases(max_pixels, max_total):
    """(name, kind, count, width, height) of every case."""
    w = 4096
    h = max_pixels // w
    out = []
    for kind in KINDS:
        out.append((f"{kind} {w}x{h} (at limit)", kind, 1, w, h))
        out.append((f"{kind} {w}x{h + 1} (above)", kind, 1, w, h + 1))
    out.append(("png16 6000x6000 (issue 9)", "png16", 1, 6000, 6000))
    out.append(("webp 6000x6000 (issue 9)", "webp", 1, 6000, 6000))
    side = int((max_total // 256) ** 0.5)
    for kind in ("png16rgba", "webp"):
        out.append((f"256 x {kind} {side}x{side} (request at budget)", kind, 256, side, side))
    out.append(("256 x png16 1024x768 (request over budget)", "png16", 256, 1024, 768))
    out.append(("4 x webp 4096x3072 (request over budget)", "webp", 4, 4096, 3072))
    return out


# --------------------------------------------------------------------------
# The child: decode one case, report its cost.

def _load_images_module(path):
    if not path:
        import cnn.images
        return cnn.images
    spec = importlib.util.spec_from_file_location("images_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _proc_status(key):
    """A memory figure of /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {key} in /proc/self/status")


def child(args):
    images = _load_images_module(args.module)
    files = sorted(os.listdir(args.child))
    items = []
    for f in files:
        with open(os.path.join(args.child, f), "rb") as fh:
            items.append(fh.read())
    tiny = io.BytesIO()
    from PIL import Image
    Image.new("L", (28, 28), 3).save(tiny, "PNG")
    images.decode_images([tiny.getvalue()], max_pixels=args.max_pixels)  # imports, caches
    errors = []
    kw = {} if args.max_total is None else {"max_total_pixels": args.max_total}

    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_maxrss / 1024, r.ru_utime + r.ru_stime

    # The increase is the peak over the resident size now. On Linux the peak
    # is VmHWM, reset to the current size by writing "5" to clear_refs, so that
    # neither the imports nor the parent's peak (which ru_maxrss inherits
    # through fork and exec) can hide the decode's.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0, peak = _proc_status("VmRSS"), lambda: _proc_status("VmHWM")
        _, cpu0 = usage()
    except OSError:  # (not Linux: ru_maxrss, the increase over the peak so far)
        rss0, cpu0 = usage()
        peak = lambda: usage()[0]  # noqa: E731
    t0 = time.perf_counter()
    try:
        images.decode_images(items, max_pixels=args.max_pixels, on_error=lambda i, e:
                             errors.append(i), **kw)
        status = "400" if errors else "ok"
    except ValueError as exc:  # PixelBudgetError: the service answers 413
        if type(exc).__name__ != "PixelBudgetError":
            raise
        status = "413"
    wall = time.perf_counter() - t0
    rss1, cpu1 = peak(), usage()[1]
    print(json.dumps({"status": status, "wall": wall, "cpu": cpu1 - cpu0,
                      "rss_mib": max(0.0, rss1 - rss0)}))


# --------------------------------------------------------------------------
# The parent: build, run every case in a fresh process, print the table.

def run_case(folder, max_pixels, max_total, module, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", folder,
           "--max-pixels", str(max_pixels)]
    if max_total is not None:
        cmd += ["--max-total", str(max_total)]
    if module:
        cmd += ["--module", module]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout {timeout:g}s", "wall": float("nan"),
                "cpu": float("nan"), "rss_mib": float("nan")}
    if done.returncode != 0:
        return {"status": f"crash ({done.stderr.strip().splitlines()[-1:]})",
                "wall": float("nan"), "cpu": float("nan"), "rss_mib": float("nan")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV",
                        help="run the old-limits column with cnn/images.py of this git revision")
    parser.add_argument("--cases", help="comma-separated kinds to keep (default: all)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed per case and column (default 120)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    parser.add_argument("--max-pixels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from cnn.images import MAX_PIXELS, MAX_TOTAL_PIXELS
    keep = None if not args.cases else set(args.cases.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="image_cost_") as tmp:
        old_module = None
        if args.baseline:
            old_module = os.path.join(tmp, "images_baseline.py")
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            source = subprocess.run(["git", "-C", root, "show", f"{args.baseline}:cnn/images.py"],
                                    capture_output=True, check=True).stdout
            with open(old_module, "wb") as f:
                f.write(source)
        columns = [("old", OLD_MAX_PIXELS, None, old_module),
                   ("new", MAX_PIXELS, MAX_TOTAL_PIXELS, None)]
        print(f"old: {'cnn/images.py@' + args.baseline if args.baseline else 'this code'}, "
              f"{OLD_MAX_PIXELS:,} pixels per image, no request budget; "
              f"new: this code, {MAX_PIXELS:,} per image, {MAX_TOTAL_PIXELS:,} per request")
        print(f"target: < {TARGET_MIB} MiB peak RSS increase and < {TARGET_CPU:g} s CPU "
              f"per request\n")
        head = (f"{'case':<46} {'body':>9}  {'limits':<5} {'answer':<8} {'wall s':>7} "
                f"{'CPU s':>7} {'RSS MiB':>8}")
        print(head)
        print("-" * len(head))
        for index, (name, kind, count, w, h) in enumerate(cases(MAX_PIXELS, MAX_TOTAL_PIXELS)):
            if keep is not None and kind not in keep:
                continue
            folder = os.path.join(tmp, f"case{index}")
            os.mkdir(folder)
            data = build(kind, w, h)
            for i in range(count):
                with open(os.path.join(folder, f"{i:04d}"), "wb") as f:
                    f.write(data)
            body = len(data) * count
            if body > BODY_LIMIT:
                print(f"{name:<46} {body:>9,}  over the body limit: skipped")
                continue
            for column, max_pixels, max_total, module in columns:
                r = run_case(folder, max_pixels, max_total, module, args.timeout)
                over = r["rss_mib"] > TARGET_MIB or r["cpu"] > TARGET_CPU
                print(f"{name:<46} {body:>9,}  {column:<5} {r['status']:<8} "
                      f"{r['wall']:7.3f} {r['cpu']:7.3f} {r['rss_mib']:8.1f}"
                      f"{'  OVER TARGET' if over else ''}", flush=True)
                rows.append({"case": name, "body_bytes": body, "limits": column, **r})
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
