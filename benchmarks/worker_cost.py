"""What one hostile request costs a real gunicorn worker: peak RSS increase and CPU.

    python benchmarks/worker_cost.py [--cases webp,json] [--repeat 2]

Starts gunicorn with the packaged settings (cnn.bench.server) with one
worker on a free 127.0.0.1 port, serving a small random-weight model, and
sends each request of the table below (every one under the 16 MiB body
limit) on its own connection, one at a time. Before each request the
worker's peak resident size is reset (``/proc/PID/clear_refs``, Linux, as
root or the worker's user); after the answer, the increase of its VmHWM over
its VmRSS before and the CPU time it used (``/proc/PID/stat``) are read.
The worker is the whole cost: HTTP parsing, the body, decoding, the forward
pass, the answer. Issue 9's target: at most 256 MiB and 1 s of CPU.

Requests: the image files of ``benchmarks/image_cost.py`` at the per-image
pixel limit (multipart, one file; and as base64 JSON), a request at the
per-request pixel budget, the issue's 6000x6000 files, and the non-image
bodies: 16 MiB of JSON pixel values, a 16 MiB V2 tensor, a full batch of
256 images as .npy and as JSON pixels.

Loopback only; every request has a 60 s client timeout.
"""
import argparse
import base64
import http.client
import importlib.util
import io
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from cnn.bench.server import free_port, gunicorn_env, start, stop, wait_ready

TARGET_MIB, TARGET_CPU = 256, 1.0
BODY_LIMIT = 16 * 1024 * 1024


def _image_cost():
    spec = importlib.util.spec_from_file_location("image_cost",
                                                  Path(__file__).parent / "image_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"f{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
             + data + b"\r\n" for i, data in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def requests():
    """(name, path, body, content type) of every case."""
    ic = _image_cost()
    from cnn.images import MAX_PIXELS, MAX_TOTAL_PIXELS
    w = 4096
    h = MAX_PIXELS // w
    out = []
    for kind in ("png16", "png16trns", "png16rgba", "webp", "webp_anim", "jpeg_prog444"):
        data = ic.build(kind, w, h)
        out.append((f"{kind} {w}x{h} multipart", "/predict", *multipart([data])))
    webp = ic.build("webp", w, h)
    out.append((f"webp {w}x{h} base64 JSON", "/predict",
                json.dumps({"images": [base64.b64encode(webp).decode()]}).encode(),
                "application/json"))
    side = int((MAX_TOTAL_PIXELS // 256) ** 0.5)
    out.append((f"256 x png16rgba {side}x{side} (budget)", "/predict",
                *multipart([ic.build("png16rgba", side, side)] * 256)))
    out.append(("png16 6000x6000 (issue 9)", "/predict",
                *multipart([ic.build("png16", 6000, 6000)])))
    out.append(("webp 6000x6000 (issue 9)", "/predict",
                *multipart([ic.build("webp", 6000, 6000)])))
    # non-image bodies
    row = "[" + ",".join(["255"] * 28) + "]"
    image = "[" + ",".join([row] * 28) + "]"
    n = (BODY_LIMIT - 64) // (len(image) + 1)
    out.append(("16 MiB JSON pixels", "/predict",
                ('{"pixels": [' + ",".join([image] * n) + "]}").encode(), "application/json"))
    out.append(("256 images JSON pixels", "/predict",
                ('{"pixels": [' + ",".join([image] * 256) + "]}").encode(), "application/json"))
    data = ",".join(["0"] * ((BODY_LIMIT - 200) // 2))
    out.append(("16 MiB V2 JSON tensor", "/v2/models/tiny/infer",
                ('{"inputs": [{"name": "input", "shape": [256, 1, 28, 28], "datatype": '
                 '"UINT8", "data": [%s]}]}' % data).encode(), "application/json"))
    buf = io.BytesIO()
    np.save(buf, np.full((256, 28, 28), 0.5, np.float64))
    out.append(("256 images float64 .npy", "/predict", buf.getvalue(), "application/x-npy"))
    for name, _, body, _ in out:
        assert len(body) <= BODY_LIMIT, (name, len(body))
    return out


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(master):
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one worker, found {pids}"
    return pids[0]


def post(port, path, body, ctype):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", help="comma-separated substrings of case names to keep")
    p.add_argument("--repeat", type=int, default=1, help="times to send each request")
    a = p.parse_args(argv)
    from cnn.architectures import build_architecture
    from cnn.io import save_model
    cases = requests()
    if a.cases:
        keep = a.cases.split(",")
        cases = [c for c in cases if any(k in c[0] for k in keep)]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_architecture("conv8k3p1-relu-maxpool2-flatten-dense10")
        model.build(seed=0)
        save_model(os.path.join(tmp, "tiny.npz"), model)
        port = free_port()
        env = gunicorn_env(port, tmp, workers=1, drop=("GUNICORN_CMD_ARGS", "CNN_API_TOKEN",
                                                       "PROMETHEUS_MULTIPROC_DIR"))
        server = start(env, "--workers", "1", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        try:
            try:
                wait_ready(port, server, 60)
            except RuntimeError as exc:
                raise SystemExit(f"worker_cost.py: {exc}") from None
            pid = worker_pid(server.pid)
            print(f"gunicorn worker {pid}, 1 worker; target < {TARGET_MIB} MiB peak RSS "
                  f"increase and < {TARGET_CPU:g} s CPU per request")
            print(f"{'request':<36} {'body':>11} {'status':>6} {'CPU s':>7} {'RSS MiB':>8}")
            print("-" * 72)
            worst_rss = worst_cpu = 0.0
            for name, path, body, ctype in cases:
                for _ in range(a.repeat):
                    with open(f"/proc/{pid}/clear_refs", "w") as f:
                        f.write("5")
                    rss0, cpu0 = proc_status(pid, "VmRSS"), proc_cpu(pid)
                    status = post(port, path, body, ctype)
                    time.sleep(0.05)
                    rss = proc_status(pid, "VmHWM") - rss0
                    cpu = proc_cpu(pid) - cpu0
                    worst_rss, worst_cpu = max(worst_rss, rss), max(worst_cpu, cpu)
                    flag = "  OVER TARGET" if rss > TARGET_MIB or cpu > TARGET_CPU else ""
                    print(f"{name:<36} {len(body):>11,} {status:>6} {cpu:>7.2f} {rss:>8.1f}"
                          f"{flag}")
            print(f"worst: {worst_cpu:.2f} s CPU, {worst_rss:.1f} MiB")
        finally:
            stop(server)


if __name__ == "__main__":
    main()
