#!/usr/bin/env python3
"""Test registries and test images for the e2e suite, built here from Debian's busybox-static.

  test-registry.py start DIR   start two docker-registry instances on free loopback ports (one
                               plain, one with htpasswd basic auth), build every test image and
                               push it; write DIR/env (shell exports) and DIR/images.json
  test-registry.py stop DIR    stop the registries started for DIR (by the pids recorded there)
  test-registry.py bench DIR   also push crius-bench/big: ~200 MB in 4 layers, for the pull benchmark

Images are deterministic (fixed mtimes, sorted entries, gzip mtime 0), so their digests are
stable from run to run. Only the standard library and the zstd/htpasswd commands are used.
"""
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import base64

EPOCH = 1700000000
USER, PASSWORD = "crius", "crius-test-password"
OCI = dict(
    index="application/vnd.oci.image.index.v1+json",
    manifest="application/vnd.oci.image.manifest.v1+json",
    config="application/vnd.oci.image.config.v1+json",
    gzip="application/vnd.oci.image.layer.v1.tar+gzip",
    zstd="application/vnd.oci.image.layer.v1.tar+zstd",
    tar="application/vnd.oci.image.layer.v1.tar",
)
DOCKER = dict(
    index="application/vnd.docker.distribution.manifest.list.v2+json",
    manifest="application/vnd.docker.distribution.manifest.v2+json",
    config="application/vnd.docker.container.image.v1+json",
    gzip="application/vnd.docker.image.rootfs.diff.tar.gzip",
)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ layers
class Layer:
    """A tar built in memory from explicit entries."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, kind, mode, **kw):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, EPOCH
        ti.uid = kw.pop("uid", 0)
        ti.gid = kw.pop("gid", 0)
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name, data, mode=0o644, **kw):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name, target):
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target))
        return self

    def hardlink(self, name, target, mode=0o644):
        # A hard link's header mode should be its target's: some unpackers apply it to the
        # shared inode.
        self.tar.addfile(self._info(name, tarfile.LNKTYPE, mode, linkname=target))
        return self

    def chardev(self, name, major, minor):
        self.tar.addfile(self._info(name, tarfile.CHRTYPE, 0o666, devmajor=major, devminor=minor))
        return self

    def raw(self):
        self.tar.close()
        return self.buf.getvalue()


def busybox_layer():
    bb = open("/bin/busybox", "rb").read()
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    l = Layer()
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "home", "var", "usr", "usr/bin"]:
        l.dir(d, mode=0o1777 if d == "tmp" else 0o755)
    l.file("bin/busybox", bb, mode=0o755)
    for a in sorted(set(applets)):
        if a != "busybox":
            l.hardlink("bin/" + a, "bin/busybox", mode=0o755)
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n"
                         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    l.file("etc/group", "root:x:0:\nstaff:x:50:www-data\nwww-data:x:33:\nnogroup:x:65534:\n")
    return l.raw()


def compress(raw, how):
    if how == "gzip":
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-3", "-c"], input=raw, capture_output=True, check=True).stdout
    return raw


# ------------------------------------------------------------------ registry protocol
class Registry:
    def __init__(self, addr, auth=None):
        self.base = "http://" + addr
        self.addr = addr
        self.auth = auth

    def req(self, method, path, data=None, headers=None):
        url = path if path.startswith("http") else self.base + path
        h = dict(headers or {})
        if self.auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        r = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with opener.open(r) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def blob(self, repo, data):
        d = sha(data)
        st, _, _ = self.req("HEAD", f"/v2/{repo}/blobs/{d}")
        if st == 200:
            return d
        st, h, body = self.req("POST", f"/v2/{repo}/blobs/uploads/")
        if st != 202:
            raise SystemExit(f"upload start {repo}: {st} {body[:200]}")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else self.base + loc
        loc += ("&" if "?" in loc else "?") + "digest=" + d
        st, _, body = self.req("PUT", loc, data, {"Content-Type": "application/octet-stream"})
        if st != 201:
            raise SystemExit(f"upload {repo} {d}: {st} {body[:200]}")
        return d

    def manifest(self, repo, ref, body, media_type):
        st, _, resp = self.req("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type})
        if st != 201:
            raise SystemExit(f"manifest {repo}:{ref}: {st} {resp[:300]}")


def push_image(reg, repo, tags, layers, config=None, fmt=OCI, arch="amd64"):
    """layers: list of (raw tar, compression). Returns a dict describing the image."""
    diff_ids, descs = [], []
    for raw, how in layers:
        blob = compress(raw, how)
        diff_ids.append(sha(raw))
        descs.append({"mediaType": fmt[how], "size": len(blob), "digest": reg.blob(repo, blob)})
    cfg = {
        "architecture": arch, "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": config or {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "crius test image"} for _ in layers],
    }
    cfg_b = json.dumps(cfg, sort_keys=True).encode()
    man = {"schemaVersion": 2, "mediaType": fmt["manifest"],
           "config": {"mediaType": fmt["config"], "size": len(cfg_b), "digest": reg.blob(repo, cfg_b)},
           "layers": descs}
    man_b = json.dumps(man, indent=2).encode()
    for t in tags:
        reg.manifest(repo, t, man_b, fmt["manifest"])
    reg.manifest(repo, sha(man_b), man_b, fmt["manifest"])
    return {"id": sha(cfg_b), "manifest": sha(man_b), "manifest_bytes": man_b, "media_type": fmt["manifest"],
            "layers": descs, "diff_ids": diff_ids, "size": len(man_b), "arch": arch}


def push_index(reg, repo, tags, entries, fmt=OCI):
    """entries: images from push_image (already in repo). Returns the index digest."""
    idx = {"schemaVersion": 2, "mediaType": fmt["index"], "manifests": [
        {"mediaType": fmt["manifest"], "size": len(e["manifest_bytes"]), "digest": e["manifest"],
         "platform": {"architecture": e["arch"], "os": "linux", **({"variant": "v8"} if e["arch"] == "arm64" else {})}}
        for e in entries]}
    idx_b = json.dumps(idx, indent=2).encode()
    for t in tags:
        reg.manifest(repo, t, idx_b, fmt["index"])
    return sha(idx_b)


# ------------------------------------------------------------------ the images
def build_all(plain, authed):
    busybox = busybox_layer()
    out = {}

    def record(name, repo, tag, img, index=None):
        out[name] = {"ref": f"{plain.addr}/{repo}:{tag}", "repo": f"{plain.addr}/{repo}", "tag": tag,
                     "id": img["id"], "manifest": img["manifest"], "index": index,
                     "layers": [l["digest"] for l in img["layers"]]}

    # Docker schema 2, one gzip layer; two extra tags of the same image.
    img = push_image(plain, "crius-test/busybox", ["latest", "v1", "v2"], [(busybox, "gzip")], fmt=DOCKER)
    record("busybox", "crius-test/busybox", "latest", img)
    # The very same image (same config, same id) in another repository.
    img = push_image(plain, "crius-test/busybox-copy", ["latest"], [(busybox, "gzip")], fmt=DOCKER)
    record("busybox_copy", "crius-test/busybox-copy", "latest", img)
    # OCI manifest, same content but an OCI config media type: a different image id.
    img = push_image(plain, "crius-test/busybox-oci", ["latest"], [(busybox, "gzip")],
                     config={"Cmd": ["sh"], "User": "1002"})
    record("busybox_oci", "crius-test/busybox-oci", "latest", img)

    # Multi-arch: OCI index and Docker manifest list, amd64 + arm64 (the arm64 one is a marker).
    for name, repo, fmt in [("multiarch_oci", "crius-test/multiarch-oci", OCI),
                            ("multiarch_docker", "crius-test/multiarch-docker", DOCKER)]:
        amd = push_image(plain, repo, [], [(busybox, "gzip")], fmt=fmt,
                         config={"Cmd": ["sh"], "Labels": {"arch": "amd64"}})
        arm = push_image(plain, repo, [], [(Layer().file("arm64", "arm64\n").raw(), "gzip")], fmt=fmt,
                         config={"Cmd": ["sh"], "Labels": {"arch": "arm64"}}, arch="arm64")
        index = push_index(plain, repo, ["latest"], [arm, amd], fmt=fmt)
        record(name, repo, "latest", amd, index=index)

    # Several layers: whiteouts, an opaque dir, zstd and uncompressed layers, links, a device,
    # an xattr, owners and modes.
    l2 = (Layer().dir("data").file("data/a", "a\n").file("data/b", "b\n", mode=0o600, uid=33, gid=33)
          .dir("opaque").file("opaque/x", "x\n").dir("opaque/sub").file("opaque/sub/y", "y\n").raw())
    l3 = Layer().dir("data").file("data/.wh.a", "").dir("opaque").file("opaque/.wh..wh..opq", "").file("opaque/z", "z\n")
    l3 = l3.raw()
    l4 = (Layer().file("zstd-file", "from a zstd layer\n", mode=0o4755)
          .hardlink("zstd-link", "zstd-file", mode=0o4755).symlink("to-data", "data/b").raw())
    l5b = Layer()
    ti = l5b._info("xattr-file", tarfile.REGTYPE, 0o644)
    ti.pax_headers = {"SCHILY.xattr.user.crius": "test"}
    ti.size = 6
    l5b.tar.addfile(ti, io.BytesIO(b"xattr\n"))
    l5 = l5b.chardev("null-dev", 1, 3).file("plain-file", "uncompressed\n").raw()
    img = push_image(plain, "crius-test/layers", ["latest"],
                     [(busybox, "gzip"), (l2, "gzip"), (l3, "gzip"), (l4, "zstd"), (l5, "tar")])
    record("layers", "crius-test/layers", "latest", img)

    # Malicious layers, each on top of busybox.
    evil = {
        "dotdot": Layer().file("../../escape-dotdot", "x").raw(),
        "absolute": Layer().file("/tmp/escape-absolute", "x").raw(),
        "symlink": Layer().symlink("out", "/tmp").file("out/escape-symlink", "x").raw(),
        "hardlink": Layer().hardlink("passwd", "../../../etc/passwd").raw(),
    }
    for tag, raw in evil.items():
        img = push_image(plain, "crius-test/evil", [tag], [(busybox, "gzip"), (raw, "gzip")])
        record("evil_" + tag, "crius-test/evil", tag, img)

    # A layer that the registry will serve corrupted (see corrupt_blob); its own tiny layer, so
    # corrupting it touches no other image.
    img = push_image(plain, "crius-test/corrupt", ["latest"],
                     [(busybox, "gzip"), (Layer().file("corrupt-me", "0123456789" * 100).raw(), "gzip")])
    record("corrupt", "crius-test/corrupt", "latest", img)

    # An image whose StopSignal is SIGUSR1 (StopContainer sends it unless the config names one).
    img = push_image(plain, "crius-test/stopsignal", ["latest"], [(busybox, "gzip")],
                     config={"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                             "Cmd": ["sh"], "StopSignal": "SIGUSR1"})
    record("stopsignal", "crius-test/stopsignal", "latest", img)

    # A pause image for peers that need one (the pod benchmark runs containerd): sleeps forever.
    img = push_image(plain, "crius-test/pause", ["latest"], [(busybox, "gzip")], fmt=DOCKER,
                     config={"Entrypoint": ["/bin/sleep", "2147483647"]})
    record("pause", "crius-test/pause", "latest", img)

    # The same busybox image on the registry that wants a password.
    img = push_image(authed, "crius-test/private", ["latest"], [(busybox, "gzip")], fmt=DOCKER,
                     config={"Cmd": ["sh"], "Labels": {"private": "yes"}})
    out["private"] = {"ref": f"{authed.addr}/crius-test/private:latest", "id": img["id"],
                      "manifest": img["manifest"], "layers": [l["digest"] for l in img["layers"]]}
    return out


def corrupt_blob(storage, digest, size):
    """Overwrites a blob in the registry's storage with different bytes of the same size."""
    hexd = digest.split(":")[1]
    path = os.path.join(storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    assert os.path.getsize(path) == size


def bench_image(reg):
    """~200 MB in 4 layers of real files from this machine (/usr), for the pull benchmark."""
    budget = 50 * 1024 * 1024
    roots = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/lib", "/usr/bin"]
    seen, layers = set(), []
    for root in roots:
        l, used = Layer(), 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                p = os.path.join(dirpath, f)
                if p in seen or not os.path.isfile(p) or os.path.islink(p):
                    continue
                try:
                    data = open(p, "rb").read()
                except OSError:
                    continue
                seen.add(p)
                l.file(p.lstrip("/"), data, mode=0o644)
                used += len(data)
                if used >= budget:
                    break
            if used >= budget:
                break
        layers.append((l.raw(), "gzip"))
    img = push_image(reg, "crius-bench/big", ["latest"], layers)
    return {"ref": f"{reg.addr}/crius-bench/big:latest", "id": img["id"],
            "bytes": sum(l["size"] for l in img["layers"]), "layers": len(layers)}


# ------------------------------------------------------------------ processes
def start_registry(work, name, auth):
    port = free_port()
    storage = os.path.join(work, name)
    os.makedirs(storage, exist_ok=True)
    cfg = os.path.join(work, name + ".yml")
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
             "  filesystem:", f"    rootdirectory: {storage}", "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}", "  secret: crius-test"]
    if auth:
        htpasswd = os.path.join(work, "htpasswd")
        subprocess.run(["htpasswd", "-Bbc", htpasswd, USER, PASSWORD], check=True, capture_output=True)
        lines += ["auth:", "  htpasswd:", "    realm: crius-test", f"    path: {htpasswd}"]
    open(cfg, "w").write("\n".join(lines) + "\n")
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(work, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    addr = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            with opener.open(f"http://{addr}/v2/", timeout=1):
                break
        except urllib.error.HTTPError:
            break  # 401 from the auth registry: it is up
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"docker-registry {name} exited; see {work}/{name}.log")
            time.sleep(0.05)
    return addr, storage


def stop(work):
    pids = os.path.join(work, "pids")
    if not os.path.exists(pids):
        return
    for line in open(pids):
        pid = int(line)
        try:
            # Only registries this script started: the pid must still run docker-registry.
            if "docker-registry" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError):
            pass
    os.remove(pids)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop", "bench"):
        raise SystemExit(__doc__)
    cmd, work = sys.argv[1], os.path.abspath(sys.argv[2])
    os.makedirs(work, exist_ok=True)
    if cmd == "stop":
        return stop(work)
    plain_addr, plain_storage = start_registry(work, "plain", auth=False)
    auth_addr, _ = start_registry(work, "auth", auth=True)
    plain, authed = Registry(plain_addr), Registry(auth_addr, (USER, PASSWORD))
    images = build_all(plain, authed)
    c = images["corrupt"]
    layer = [l for l in c["layers"]][-1]
    st, h, _ = plain.req("HEAD", f"/v2/crius-test/corrupt/blobs/{layer}")
    corrupt_blob(plain_storage, layer, int(h["Content-Length"]))
    if cmd == "bench":
        images["bench"] = bench_image(plain)
    meta = {"registry": plain_addr, "auth_registry": auth_addr, "user": USER, "password": PASSWORD,
            "images": images}
    json.dump(meta, open(os.path.join(work, "images.json"), "w"), indent=2)
    with open(os.path.join(work, "env"), "w") as f:
        f.write(f"export CRIUS_TEST_REGISTRY={plain_addr}\n")
        f.write(f"export CRIUS_TEST_IMAGES={os.path.join(work, 'images.json')}\n")
    print(f"test registries: plain {plain_addr}, auth {auth_addr}; {len(images)} images; {work}/images.json",
          file=sys.stderr)


if __name__ == "__main__":
    main()
